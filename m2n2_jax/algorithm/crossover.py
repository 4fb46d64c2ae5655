"""Crossover (SLERP with an evolving split point) and mutation on flat vectors.

SLERP between whole parent vectors x and y has one angle, so a child is
``cx(t) * x + cy(t) * y`` with scalar coefficients; with a split point there
are just two values of t (w before the split, 1 - w from it on). Computing the
four scalars first and blending once keeps child generation cheap.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


SLERP_EPS = 1e-3
"""Default degeneracy threshold on sin(angle). float32 ``arccos`` cannot resolve
angles below about 3.5e-4 rad (the first float below 1 is 1 - 6e-8), and below
1e-3 rad SLERP and linear interpolation differ by about one float32 rounding."""
REFERENCE_SLERP_EPS = 1e-6
"""The authors' threshold, kept for ``key_order="reference"``."""


def slerp_coefficients(x, y, t, eps=SLERP_EPS, reference: bool = False):
    """Coefficients (cx, cy) with SLERP(x, y; t) = cx * x + cy * y.

    t may be an array of interpolation values; t = 0 gives x, t = 1 gives y.
    ``eps`` may be traced. Degenerate cases (docs/algorithm.md), where
    sin(angle) <= eps or a parent is zero:

    - parallel parents (cos > 0) or a zero parent: linear interpolation
      (1 - t, t), the limit of SLERP as the angle shrinks;
    - antiparallel parents (cos < 0): no great circle is singled out, and
      linear interpolation passes through zero (x and -x give a zero child at
      t = 0.5), so the nearer parent is taken: x for t <= 0.5, y above.

    ``reference=True`` is the authors' rule: linear interpolation in both cases.
    """
    unit_x = x / jnp.linalg.norm(x)
    unit_y = y / jnp.linalg.norm(y)
    cos = jnp.clip(jnp.dot(unit_x, unit_y), -1, 1)  # NaN for a zero parent
    omega = jnp.arccos(cos)
    sin_omega = jnp.sin(omega)
    curved = sin_omega > eps
    lin_x, lin_y = 1.0 - t, t
    if not reference:
        to_y = jnp.where(t > 0.5, 1.0, 0.0)
        antiparallel = cos < 0
        lin_x, lin_y = jnp.where(antiparallel, 1.0 - to_y, lin_x), jnp.where(antiparallel, to_y, lin_y)
    cx = jnp.where(curved, jnp.sin((1.0 - t) * omega) / sin_omega, lin_x)
    cy = jnp.where(curved, jnp.sin(t * omega) / sin_omega, lin_y)
    return cx, cy


def slerp(x, y, t, eps=SLERP_EPS, reference: bool = False):
    """Spherical interpolation of two vectors with one scalar t."""
    cx, cy = slerp_coefficients(x, y, t, eps, reference)
    return cx * x + cy * y


def crossover(key, x, y, use_split_point: bool = True, eps=SLERP_EPS, reference: bool = False):
    """Child of x (parent A) and y (parent B).

    With a split point: s ~ U{0..D-1}, w ~ U(0, 1) from two sub-keys of ``key``;
    t = w on coordinates before s and 1 - w from s on (s = 0: 1 - w everywhere).
    Without: w ~ U(0, 1) from ``key`` itself (the reference's key use).
    """
    size = x.shape[0]
    if use_split_point:
        k_split, k_w = jax.random.split(key)
        split = jax.random.randint(k_split, (), 0, size)
        w = jax.random.uniform(k_w)
        cx, cy = slerp_coefficients(x, y, jnp.stack([w, 1 - w]), eps, reference)
        before = jnp.arange(size) < split
        return jnp.where(before, cx[0], cx[1]) * x + jnp.where(before, cy[0], cy[1]) * y
    w = jax.random.uniform(key)
    return slerp(x, y, w, eps, reference)


def mutate(key, x, std: float, noise: str = "threefry"):
    """x plus N(0, std^2) noise, drawn once for the whole vector."""
    draw = hash_normal if noise == "hash" else jax.random.normal
    return x + draw(key, x.shape, x.dtype) * std


def _mix32(x):
    """A bijective 32-bit integer hash with strong avalanche (lowbias32 constants)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_normal(key, shape, dtype=jnp.float32):
    """Standard normal noise from a keyed counter hash, cheaper to draw than threefry (README: design notes).

    Element i gets ``mix(mix(i * phi + k0) ^ k1)`` for the key's two words
    (k0, k1); its top 24 bits give a uniform in (-1, 1), mapped through
    sqrt(2) * erfinv. Fine for mutation noise (moments and independence are
    tested); not a general-purpose PRNG. Keys still come from jax.random.
    """
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = words.astype(jnp.uint32)
    count = math.prod(shape)
    x = _mix32(jax.lax.iota(jnp.uint32, count) * jnp.uint32(0x9E3779B1) + words[0])
    x = _mix32(x ^ words[1])
    u = (x >> 8).astype(jnp.float32) * (2.0 ** -23) - (1.0 - 2.0 ** -24)
    return (jax.lax.erf_inv(u) * jnp.sqrt(jnp.float32(2))).reshape(shape).astype(dtype)
