"""Merging baselines and the check that a merged vector is a merge of its seeds.

Everything here works on flat parameter vectors and a score function
``score(x) -> [N]``, the same interface the M2N2 engine uses, so the dense
archive could be replaced by one that stores recipes and materialises them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..crossover import slerp
from ..errors import ConfigError, SeedModelError


def linear_average(vectors):
    """The uniform average of models [K, D]."""
    return jnp.mean(jnp.asarray(vectors), axis=0)


def slerp_sweep(score_mean, x, y, ratios):
    """(best ratio, mean scores [R]) of SLERP(x, y; t) over ``ratios``; ties go to the first."""
    ratios = jnp.asarray(ratios, jnp.float32)
    if ratios.ndim != 1 or ratios.shape[0] < 1:
        raise ConfigError("slerp_sweep needs a non-empty 1-D array of ratios in [0, 1].")
    values = jax.lax.map(lambda t: score_mean(slerp(x, y, t)), ratios)
    return float(ratios[int(jnp.argmax(values))]), np.asarray(values)


@dataclasses.dataclass(frozen=True)
class PiecewiseFit:
    """A vector written as sum_k coeffs[s, k] * seeds[k] on each segment s."""

    starts: np.ndarray       # [S] first coordinate of each segment
    coeffs: np.ndarray       # [S, K]
    max_residual: float      # max |reconstruction - vector| / max |vector|

    @property
    def num_segments(self) -> int:
        return len(self.starts)


def piecewise_fit(vector, seeds, rtol: float = 1e-4, window: int = 16) -> PiecewiseFit:
    """Split ``vector`` [D] into the fewest runs of coordinates on which it is
    one fixed linear combination of the seed vectors [K, D].

    Without mutation every M2N2 child is such a piecewise combination (SLERP
    of two combinations with one angle, two weights around a split point), so
    a merge yields few segments, while a vector that is not a merge needs a
    new segment every few coordinates. Greedy: fit coefficients by least
    squares on ``window`` coordinates, extend the segment while they predict
    the next coordinate within rtol * max|vector|; a window that does not fit
    is shrunk until it does. Works in float64 on the host.
    """
    v = np.asarray(vector, np.float64)
    s = np.asarray(seeds, np.float64)
    if s.ndim != 2 or v.shape != s.shape[1:]:
        raise SeedModelError(f"vector {v.shape} and seeds {s.shape} do not match: pass [D] and [K, D].")
    k, d = s.shape
    tol = rtol * max(np.max(np.abs(v)), 1e-30)
    starts, coeffs, worst = [], [], 0.0
    i = 0
    while i < d:
        width = min(max(window, k), d - i)
        while True:
            c, *_ = np.linalg.lstsq(s[:, i:i + width].T, v[i:i + width], rcond=None)
            err = np.abs(s[:, i:i + width].T @ c - v[i:i + width])
            if width == 1 or np.max(err) <= tol:
                break
            width = max(1, width // 2)
        pred = np.abs(s[:, i + width:].T @ c - v[i + width:]) > tol
        end = i + width + (int(np.argmax(pred)) if pred.any() else d - i - width)
        worst = max(worst, float(np.max(np.abs(s[:, i:end].T @ c - v[i:end]), initial=0.0)))
        starts.append(i)
        coeffs.append(c)
        i = end
    scale = max(np.max(np.abs(v)), 1e-30)
    return PiecewiseFit(np.asarray(starts), np.asarray(coeffs), worst / scale)


def word_rows_mask(layout, params, token_ids) -> np.ndarray:
    """Boolean [D]: the flat coordinates of the embedding rows of ``token_ids``."""
    marks = jax.tree.map(jnp.zeros_like, params)
    text = marks["params"]["text"]
    emb = text["embed"]["embedding"].at[jnp.asarray(token_ids)].set(1.0)
    marks = {**marks, "params": {**marks["params"], "text": {**text, "embed": {"embedding": emb}}}}
    return np.asarray(layout.ravel(marks)) > 0.5


def block_coefficients(vector, seeds, mask) -> np.ndarray:
    """Least-squares coefficients [K] of the seeds on the coordinates in ``mask`` (min-norm)."""
    s = np.asarray(seeds, np.float64)[:, mask]
    c, *_ = np.linalg.lstsq(s.T, np.asarray(vector, np.float64)[mask], rcond=None)
    return c
