"""mergekit's merge methods on one tensor at a time, on the host (numpy).

What a mergekit YAML merge (:mod:`m2n2_jax.methods.mergekit_config`) runs for
each tensor name: ``base`` is the base model's tensor (or None), ``tensors``
the other models' tensors, ``shared`` the method's global parameters and
``per_model`` one dict per tensor in ``tensors``. Semantics are mergekit
0.1.5's (the same definitions as :mod:`m2n2_jax.methods.classic_merges`,
which works on flat vectors inside JAX); the code is written independently.

Numerics: elementwise steps are rounded to the merge ``dtype`` where mergekit
materialises a tensor in it (so bfloat16 merges compute in bfloat16, as
mergekit's do); every reduction (norms, dot products, L1 norms) is a float64
sum, at least as accurate as mergekit's float32 ones. No compilation: each
tensor costs a few passes over its entries, whatever its shape.
"""
from __future__ import annotations

import math

import numpy as np

from m2n2_jax.errors import ConfigError
from m2n2_jax.methods.classic_merges import (DIVISOR_EPS, MODEL_STOCK_NORM_EPS, MODEL_STOCK_SINGULAR, RESCALE_EPS,
                                             SLERP_DOT_THRESHOLD, SLERP_NORM_EPS, kept_count)


class Rounding:
    """Rounds float32 work arrays to the merge dtype (identity for float32 and wider)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.work = np.float64 if self.dtype == np.float64 else np.float32

    def __call__(self, x):
        x = np.asarray(x)
        if self.dtype.itemsize >= np.dtype(self.work).itemsize:
            return x.astype(self.work, copy=False)
        return x.astype(self.dtype).astype(self.work)


def _f64_sum(x, axis=None):
    return np.sum(x, axis=axis, dtype=np.float64)


# ---------------------------------------------------------------- sparsification (one tensor)
def magnitude_mask(delta, density: float) -> np.ndarray:
    """The max(1, int(density * n)) entries of largest |delta| (equal magnitudes at the cut: lower index first)."""
    flat = np.abs(np.asarray(delta, np.float32)).ravel()
    n = flat.size
    keep = kept_count(density, n)
    if keep >= n:
        return np.ones(delta.shape, bool)
    cut = np.partition(flat, n - keep)[n - keep]             # the keep-th largest magnitude
    mask = flat > cut
    tied = np.flatnonzero(flat == cut)[:keep - int(mask.sum())]
    mask[tied] = True
    return mask.reshape(delta.shape)


def outlier_mask(delta, density: float, gamma: float) -> np.ndarray:
    """Breadcrumbs: drop the gamma n largest |delta| and the smallest, keeping int(density n) in between."""
    flat = np.abs(np.asarray(delta, np.float32)).ravel()
    n = flat.size
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    return _rank_window(flat, bottom, bottom + target).reshape(delta.shape)


def _rank_window(flat, start: int, stop: int) -> np.ndarray:
    """Mask of the entries whose rank in ascending order (equal values by index) lies in [start, stop).

    Two partitions instead of a sort: O(n), the same entries as a stable argsort.
    """
    mask = np.zeros(flat.size, bool)
    if stop <= start:
        return mask
    low, high = np.partition(flat, [start, stop - 1])[[start, stop - 1]]
    mask[(flat > low) & (flat < high)] = True
    for value in {float(low), float(high)}:
        tied = np.flatnonzero(flat == value)
        rank = int(np.count_nonzero(flat < value)) + np.arange(tied.size)
        mask[tied[(rank >= start) & (rank < stop)]] = True
    return mask


def della_keep_probabilities(delta, density: float, epsilon: float) -> np.ndarray:
    """DELLA's MagPrune: per row, keep probability density - eps + 2 eps (rank of |delta| in the row) / (n - 1)."""
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ConfigError(f"della: density {density} +/- epsilon {epsilon} must lie in (0, 1); lower epsilon.")
    rows = np.abs(np.asarray(delta, np.float32)).reshape(-1, delta.shape[-1]) if delta.ndim >= 2 else \
        np.abs(np.asarray(delta, np.float32)).reshape(1, -1)
    ranks = np.argsort(np.argsort(rows, axis=1, kind="stable"), axis=1, kind="stable").astype(np.float64)
    span = rows.shape[1] - 1
    norm = ranks / span if span > 0 else np.zeros_like(ranks)
    return ((density - epsilon) + norm * 2 * epsilon).reshape(delta.shape)


def rescale_masked(delta, mask, rounding: Rounding):
    """mergekit's L1 rescale: masked delta times ||delta||_1 / ||masked||_1 (unscaled when either is < 1e-7)."""
    masked = rounding(np.where(mask, delta, 0))
    before, after = _f64_sum(np.abs(delta)), _f64_sum(np.abs(masked))
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return rounding(masked * np.asarray(before / after, rounding.work))


# ---------------------------------------------------------------- methods
SPARSIFIERS = {"ties": "magnitude", "dare_ties": "random", "dare_linear": "random", "breadcrumbs": "outliers",
               "breadcrumbs_ties": "outliers", "della": "della", "della_linear": "della", "task_arithmetic": None}
CONSENSUS = {"ties", "dare_ties", "breadcrumbs_ties", "della"}


def generalized_task_arithmetic(method: str, base, tensors, shared: dict, per_model: list, rounding: Rounding,
                                rng: np.random.Generator | None = None):
    """task_arithmetic, ties, dare_*, breadcrumbs*, della*: sparsify each delta, weight, (sign vote), sum."""
    sparsifier = SPARSIFIERS[method]
    base = rounding(base)
    deltas = []
    for tensor, params in zip(tensors, per_model):
        delta = rounding(rounding(tensor) - base)
        density = float(params.get("density", 1.0))
        if sparsifier and density < 1:
            if density <= 0:
                delta = np.zeros_like(delta)
            else:
                mask = _sparsify_mask(sparsifier, delta, density, params, rng)
                delta = rescale_masked(delta, mask, rounding) if shared["rescale"] else rounding(np.where(mask, delta, 0))
        deltas.append(delta)
    deltas = np.stack(deltas)
    weights = rounding(np.array([float(p["weight"]) for p in per_model])).reshape((-1,) + (1,) * base.ndim)
    deltas = rounding(deltas * weights)
    if method in CONSENSUS:
        elected = np.where(rounding(deltas.sum(axis=0)) >= 0, 1, -1)
        agree = np.sign(deltas) == elected
        mixed = rounding(np.where(agree, deltas, 0).sum(axis=0))
        divisor = rounding(np.where(agree, weights, 0).sum(axis=0))
        divisor[divisor == 0] = 1
    else:
        mixed = rounding(deltas.sum(axis=0))
        divisor = rounding(weights.sum(axis=0))
        divisor[np.abs(divisor) < DIVISOR_EPS] = 1
    if shared["normalize"]:
        mixed = rounding(mixed / divisor)
    if float(shared["lambda"]) != 1:
        mixed = rounding(mixed * np.asarray(float(shared["lambda"]), rounding.work))
    return rounding(base + mixed)


def _sparsify_mask(sparsifier, delta, density, params, rng):
    if sparsifier == "magnitude":
        return magnitude_mask(delta, density)
    if sparsifier == "outliers":
        return outlier_mask(delta, density, float(params.get("gamma", 0.01)))
    if rng is None:
        raise ConfigError("a random sparsification (DARE, DELLA) needs a random generator; pass rng.")
    if sparsifier == "random":
        return rng.random(delta.shape) < density
    probabilities = della_keep_probabilities(delta, density, float(params.get("epsilon", 0.15)))
    return rng.random(delta.shape) < probabilities


def linear(tensors, per_model: list, shared: dict, rounding: Rounding):
    """mergekit ``linear``: sum_k w_k theta_k (in float32), divided by sum_k w_k when ``normalize``.

    Each step is one fused multiply-add, as torch's ``addcmul_`` on a CPU (a
    float32 product is exact in float64, so rounding the float64 sum once
    gives the fused result).
    """
    weights = [float(p["weight"]) for p in per_model]
    out = np.zeros(np.shape(tensors[0]), np.float64 if rounding.work == np.float64 else np.float32)
    for tensor, w in zip(tensors, weights):
        product = np.asarray(tensor, np.float64) * np.float64(out.dtype.type(w))
        out = (out.astype(np.float64) + product).astype(out.dtype)
    if shared.get("normalize", True):
        out /= out.dtype.type(sum(out.dtype.type(w) for w in weights))
    return rounding(out)


def slerp(t: float, a, b, rounding: Rounding):
    """mergekit ``slerp`` from ``a`` (t = 0, the base) to ``b``; linear where |cos| > 0.9995 (float32 math)."""
    work = rounding.work
    x, y = np.asarray(a, work).ravel(), np.asarray(b, work).ravel()
    na, nb = math.sqrt(_f64_sum(np.square(x, dtype=np.float64))), math.sqrt(_f64_sum(np.square(y, dtype=np.float64)))
    na, nb = (na if na > SLERP_NORM_EPS else 1.0), (nb if nb > SLERP_NORM_EPS else 1.0)
    dot = min(1.0, max(-1.0, float(np.dot(x.astype(np.float64), y.astype(np.float64))) / (na * nb)))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = math.acos(dot)
        ca, cb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return rounding((work(ca) * x + work(cb) * y).reshape(np.shape(a)))


def model_stock(base, tensors, shared: dict, rounding: Rounding):
    """mergekit ``model_stock``: t = K cos / (1 + (K - 1) cos) between the base and the fine-tunes' mean.

    ``filter_wise`` takes one cosine per row (the last axis) instead of one per tensor.
    """
    k = len(tensors)
    if k < 2:
        raise ConfigError(f"model_stock needs at least two models besides the base (got {k}).")
    w0 = rounding(base)
    shape = w0.shape
    rows = (lambda x: x.reshape(-1, shape[-1]) if x.ndim >= 1 else x.reshape(1, 1)) if shared.get("filter_wise") \
        else (lambda x: x.reshape(1, -1))
    ws = [rounding(w) for w in tensors]
    offsets = [rows(rounding(w - w0)).astype(np.float64) for w in ws]
    norms = [np.sqrt(np.sum(o * o, axis=1)) for o in offsets]
    cosines = [np.clip(np.sum(offsets[i] * offsets[j], axis=1) / np.maximum(norms[i] * norms[j], MODEL_STOCK_NORM_EPS),
                       -1, 1) for i in range(k) for j in range(i + 1, k)]
    cos = np.mean(cosines, axis=0)
    denominator = 1 + (k - 1) * cos
    singular = np.abs(denominator) < MODEL_STOCK_SINGULAR
    t = rounding(np.where(singular, 0.0, k * cos / np.where(singular, 1.0, denominator)))[:, None]
    average = rounding(sum(ws[1:], ws[0]) / rounding.work(k))
    return rounding(t * rows(average) + (1 - t) * rows(w0)).reshape(shape)


def _dot(x, y) -> float:
    return float(np.sum(x * y, dtype=np.float64))


def multislerp(base, tensors, per_model: list, shared: dict, rounding: Rounding):
    """mergekit ``multislerp``: weighted mean of the (base-relative) unit directions, mapped back to the sphere.

    Entries in the work dtype (float32), as mergekit; sums in float64.
    """
    eps = float(shared.get("eps", 1e-8))
    work = rounding.work
    if len(tensors) == 1:
        return rounding(tensors[0])
    x = [np.asarray(t, work).ravel() for t in tensors]
    if base is not None:
        x = [rounding(v - np.asarray(base, work).ravel()) for v in x]
    w = np.array([float(p["weight"]) for p in per_model])
    if shared.get("normalize_weights", True):
        w = w / w.sum()
    norms = [math.sqrt(_dot(v, v)) for v in x]
    units = [v / work(n + eps) for v, n in zip(x, norms)]
    mean = sum(work(wk) * u for wk, u in zip(w, units))
    mean_norm = math.sqrt(_dot(mean, mean))
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ConfigError("multislerp: the weighted mean direction is zero (antipodal inputs with balancing "
                              "weights); change the weights.")
        out = x[0] * work(w[0]) + x[1] * work(w[1])
    else:
        mean = mean / work(mean_norm)
        tangent = sum(work(wk) * (u - work(_dot(u, mean)) * mean) for wk, u in zip(w, units))
        size = math.sqrt(_dot(tangent, tangent)) + eps
        out = (mean * work(math.cos(size)) + tangent * work(math.sin(size) / size)) * work(sum(
            n * wk for n, wk in zip(norms, w)))
    if base is not None:
        out = out + np.asarray(base, work).ravel()
    return rounding(out.reshape(np.shape(tensors[0])))


def karcher(tensors, shared: dict, rounding: Rounding):
    """mergekit ``karcher``: the Karcher mean of the unit directions (equal weights), scaled by the mean norm.

    Entries in the work dtype (float32), as mergekit; sums in float64.
    """
    if len(tensors) == 1:
        return rounding(tensors[0])
    work = rounding.work
    max_iter, tol = int(shared.get("max_iter", 10)), float(shared.get("tol", 1e-5))
    alphas = [1.0 / len(tensors)] * len(tensors)
    x = [np.asarray(t, work).ravel() for t in tensors]
    norms = [math.sqrt(_dot(v, v)) for v in x]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return rounding(np.zeros(np.shape(tensors[0])))
    units = [x[i] / work(norms[i]) for i in valid]
    a = np.array([alphas[i] for i in valid])
    a = a / a.sum()
    mean = sum(work(ai) * u for ai, u in zip(a, units))
    mean_norm = math.sqrt(_dot(mean, mean))
    mean = units[0].copy() if mean_norm < tol else mean / work(mean_norm)
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for ai, u in zip(a, units):
            dot = min(1.0, max(-1.0, _dot(mean, u)))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += work(ai * theta / math.sin(theta)) * (u - work(dot) * mean)
        size = math.sqrt(_dot(tangent, tangent))
        if size < tol:
            break
        mean = work(math.cos(size)) * mean + work(math.sin(size) / size) * tangent
        unit_norm = math.sqrt(_dot(mean, mean))
        if unit_norm > tol:
            mean = mean / work(unit_norm)
    scale = sum(al * n for al, n in zip(alphas, norms))
    return rounding((work(scale) * mean).reshape(np.shape(tensors[0])))


GTA_METHODS = tuple(SPARSIFIERS)
METHODS = ("linear", "slerp", "model_stock", "multislerp", "karcher") + GTA_METHODS
RANDOM_METHODS = ("dare_ties", "dare_linear", "della", "della_linear")
