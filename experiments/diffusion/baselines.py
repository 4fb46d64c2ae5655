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

from m2n2_jax.algorithm.crossover import slerp
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.search import OnHost, Scorer, run_search
from m2n2_jax.methods.evosax_es import EvosaxSearch
from m2n2_jax.errors import ConfigError, SeedModelError


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


def layer_ids(layout, params) -> tuple[np.ndarray, list[str]]:
    """(layer index of every flat coordinate [D], layer names): a layer is a top-level module."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    tops = [p.split("']")[1].split("['")[1] if p.startswith("['params']") else p for p in paths]
    names = sorted(set(tops), key=tops.index)
    marks = jax.tree.unflatten(jax.tree.structure(params),
                               [jnp.full(np.shape(l), names.index(t), jnp.float32)
                                for t, l in zip(tops, jax.tree.leaves(params))])
    return np.asarray(layout.ravel(marks)).astype(np.int32), names


def layer_merge(seeds, ids, logits):
    """sum_k softmax(logits[l])_k * seeds[k] on the coordinates of each layer l; logits [L, K]."""
    weights = jax.nn.softmax(logits, axis=-1)[jnp.asarray(ids)]          # [D, K]
    return jnp.sum(weights.T * seeds, axis=0)


def cma_es_layers(seeds, ids, num_layers: int, features_fn, ref_features, budget: int, seed: int,
                  population: int = 16, std: float = 1.0, log=None):
    """CMA-ES (evosax) over per-layer mixing logits [L, K], minimising FID in the judge's feature space.

    features_fn(x) -> generated features [n, F] for a merged vector; the FID is
    against ``ref_features`` [n, F]. Starts at the linear average (all logits
    0). Returns (best vector, best FID, curve [(evaluations, best FID)]).
    """
    from evosax.algorithms import CMA_ES

    from experiments.diffusion.classifier import frechet_distance

    seeds = jnp.asarray(seeds)
    shape = (num_layers, seeds.shape[0])
    es = CMA_ES(population_size=population, solution=jnp.zeros(shape))
    params = es.default_params.replace(std_init=std)
    feats = jax.jit(lambda pop: jax.lax.map(lambda w: features_fn(layer_merge(seeds, ids, w)), pop))
    ref = np.asarray(ref_features)
    best, best_w, evaluated, curve = np.inf, jnp.zeros(shape), 0, []

    def minus_fids(pop):
        """Scores [P, 1] = -FID of the members the budget still allows (the others: never evaluated, -inf);
        the best FID and the curve are kept here in float64."""
        nonlocal best, best_w, evaluated
        scored = jnp.asarray(pop)[:budget - evaluated]
        fid = np.array([frechet_distance(f, ref) for f in np.asarray(feats(scored))])
        evaluated += len(fid)
        if fid.min() < best:
            best, best_w = float(fid.min()), scored[int(fid.argmin())]
        curve.append((evaluated, best))
        if log and (len(curve) % 10 == 0 or evaluated >= budget):
            log(f"  CMA-ES {evaluated}/{budget} evaluations, best training FID {best:.3f}")
        return np.concatenate([-fid, np.full(population - len(fid), -np.inf)])[:, None].astype(np.float32)

    generations = -(-budget // population)
    run_search(OnHost(EvosaxSearch(es), jit=False), params, Scorer(None, jittable=False, batch=minus_fids), [seed],
               jnp.zeros((1,) + shape), plan_budget(generations * population, population, generations * population),
               seed_scores=np.full((1, 1), -np.inf, np.float32))
    return layer_merge(seeds, ids, best_w), best, curve
