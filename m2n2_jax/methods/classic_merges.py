"""Classic model-merging baselines on flat parameter vectors.

All functions are pure and work on vectors of length D (a model flattened with
:class:`~m2n2_jax.algorithm.flatten.VectorLayout`): ``base`` is the shared pre-trained
model, ``finetuned`` [K, D] the specialists, task vectors are ``finetuned - base``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from m2n2_jax.errors import ConfigError


def linear(models, weights) -> jax.Array:
    """sum_k weights[k] * models[k] (the plain average for equal weights)."""
    return jnp.tensordot(jnp.asarray(weights, models.dtype), models, axes=1)


def task_arithmetic(base, finetuned, scale: float = 1.0) -> jax.Array:
    """base + scale * sum_k (finetuned_k - base) (Ilharco et al., 2023)."""
    return base + scale * jnp.sum(finetuned - base, axis=0)


def trim_threshold(task_vector, density: float) -> jax.Array:
    """Magnitude of the ceil(density * D)-th largest entry of |task_vector|."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1] (got {density}); it is the fraction of entries kept.")
    keep = max(1, math.ceil(density * task_vector.shape[0]))
    return jnp.sort(jnp.abs(task_vector))[task_vector.shape[0] - keep]


def ties(base, finetuned, density: float = 0.2, scale: float = 1.0) -> jax.Array:
    """TIES merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

    Each task vector keeps its entries of largest magnitude (a fraction
    ``density``; ties at the threshold are kept); the elected sign of a
    coordinate is the sign of the sum of the trimmed values; the merge adds
    ``scale`` times the mean of the trimmed values that agree with it.
    """
    tau = finetuned - base
    thresholds = jax.vmap(lambda t: trim_threshold(t, density))(tau)
    trimmed = jnp.where(jnp.abs(tau) >= thresholds[:, None], tau, 0)
    sign = jnp.sign(jnp.sum(trimmed, axis=0))
    agree = (jnp.sign(trimmed) == sign) & (trimmed != 0)
    count = jnp.sum(agree, axis=0)
    merged = jnp.sum(jnp.where(agree, trimmed, 0), axis=0) / jnp.maximum(count, 1)
    return base + scale * merged


def dare_masks(key, num_models: int, size: int, drop: float) -> jax.Array:
    """Keep-masks [K, D]: each entry kept with probability 1 - drop."""
    if not 0 <= drop < 1:
        raise ConfigError(f"drop must be in [0, 1) (got {drop}); it is the fraction of task-vector entries dropped.")
    return jax.random.uniform(key, (num_models, size)) >= drop


def dare(base, finetuned, masks, drop: float, scale: float = 1.0) -> jax.Array:
    """DARE (Yu et al., 2024): drop task-vector entries, rescale by 1/(1-drop), add."""
    tau = jnp.where(masks, finetuned - base, 0) / (1.0 - drop)
    return base + scale * jnp.sum(tau, axis=0)


def grouped_task_arithmetic(base, finetuned, groups, weights) -> jax.Array:
    """base + sum_k weights[groups[d], k] * tau_k[d]: one coefficient per model and group.

    groups [D] assigns each coordinate to a group (e.g. its layer); weights is [G, K].
    This is the search space CMA-ES explores in the evolutionary model-merge recipe.
    """
    per_coordinate = jnp.asarray(weights)[groups]  # [D, K]
    return base + jnp.sum(per_coordinate.T * (finetuned - base), axis=0)


def leaf_groups(layout) -> jax.Array:
    """Group id [D] of each coordinate: the index of its leaf in the layout's order."""
    sizes = [math.prod(layout.shapes[i]) for i in layout.order]
    return jnp.repeat(jnp.arange(len(sizes)), jnp.asarray(sizes), total_repeat_length=sum(sizes))
