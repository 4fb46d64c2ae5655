"""Classic model merges on flat parameter vectors, with mergekit's semantics.

Vectors have length D (a model flattened with
:class:`~m2n2_jax.algorithm.flatten.VectorLayout`): ``base`` is the shared
pre-trained model, ``finetuned`` [K, D] the specialists, task vectors
``tau_k = finetuned_k - base``. mergekit works tensor by tensor, so trimming,
rescaling, SLERP angles and Model Stock's cosine are computed per tensor: the
functions take ``tensor_ids`` [D], the tensor (leaf) each coordinate belongs to
(:func:`leaf_groups` of a layout; any grouping works, it need not be contiguous).

Defaults follow mergekit (arcee-ai/mergekit, mid 2026): density 1 (no
trimming) unless set, TIES's sign vote counts a zero sum as +, DARE rescales
the kept entries by the L1 norm ratio. The older whole-model variants stay
available as :func:`ties_global` and :func:`dare_rescale_legacy`.
See docs/baselines.md, "Classic merges (mergekit semantics)".
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import ConfigError

SLERP_DOT_THRESHOLD = 0.9995  # mergekit: |cos| above this -> linear interpolation
SLERP_NORM_EPS = 1e-8         # mergekit: a tensor of norm <= eps is not normalised
RESCALE_EPS = 1e-7            # mergekit: no L1 rescaling when either norm is below this
MODEL_STOCK_NORM_EPS = 1e-6   # mergekit: the norm product is clamped to at least this
DIVISOR_EPS = 1e-8            # mergekit: a |sum of weights| below this divides by 1


# ---------------------------------------------------------------- helpers
def leaf_groups(layout) -> jax.Array:
    """Tensor id [D] of each coordinate: the index of its leaf in the layout's order."""
    sizes = [math.prod(layout.shapes[i]) for i in layout.order]
    return ids_from_sizes(sizes)


def ids_from_sizes(sizes) -> jax.Array:
    """Tensor ids [sum(sizes)] for contiguous tensors of the given sizes."""
    sizes = [int(s) for s in sizes]
    return jnp.repeat(jnp.arange(len(sizes)), jnp.asarray(sizes), total_repeat_length=sum(sizes))


def _count(tensor_ids, num_tensors):
    if num_tensors is not None:
        return int(num_tensors)
    return int(jnp.max(tensor_ids)) + 1


def _weights(weights, k: int, dtype) -> jax.Array:
    if weights is None:
        return jnp.ones(k, dtype)
    w = jnp.asarray(weights, dtype)
    if w.shape != (k,):
        raise ConfigError(f"weights has shape {w.shape}, expected ({k},): one weight per model.")
    return w


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1] (got {density}); it is the fraction of entries kept.")


def _segment_sum(values, tensor_ids, n):
    """Per-tensor sums of the last axis of values [..., D] -> [..., n]."""
    return jax.vmap(lambda v: jax.ops.segment_sum(v, tensor_ids, n))(values.reshape(-1, values.shape[-1])).reshape(
        values.shape[:-1] + (n,))


# ---------------------------------------------------------------- linear / task arithmetic
def linear(models, weights=None, *, normalize: bool = True) -> jax.Array:
    """mergekit ``linear``: sum_k w_k theta_k, divided by sum_k w_k unless ``normalize`` is False."""
    w = _weights(weights, models.shape[0], models.dtype)
    out = jnp.tensordot(w, models, axes=1)
    return out / jnp.sum(w) if normalize else out


def task_arithmetic(base, finetuned, scale: float = 1.0, *, weights=None, normalize: bool = False) -> jax.Array:
    """mergekit ``task_arithmetic``: base + scale * sum_k w_k tau_k (Ilharco et al., 2023).

    ``scale`` is mergekit's ``lambda``; with ``normalize`` the sum is divided by
    sum_k w_k (by 1 where that is below 1e-8).
    """
    w = _weights(weights, finetuned.shape[0], finetuned.dtype)
    mixed = jnp.tensordot(w, finetuned - base, axes=1)
    if normalize:
        total = jnp.sum(w)
        mixed = mixed / jnp.where(jnp.abs(total) < DIVISOR_EPS, 1, total)
    return base + scale * mixed


# ---------------------------------------------------------------- sparsification (per tensor)
def magnitude_masks(task_vectors, tensor_ids, density: float, num_tensors: int | None = None) -> jax.Array:
    """Keep-masks [K, D]: per model and tensor, the int(density * n) entries of largest |tau|.

    ``tensor_ids`` must be concrete (not traced): the counts are computed on the host.

    Ties in magnitude go to the lower coordinate index (mergekit leaves their
    order to torch's sort). Density 1 keeps everything, as mergekit does.
    """
    _check_density(density)
    if density >= 1:
        return jnp.ones(task_vectors.shape, bool)
    n = _count(tensor_ids, num_tensors)
    host_sizes = np.bincount(np.asarray(tensor_ids), minlength=n)
    host_keep = np.array([int(density * int(size)) for size in host_sizes])  # Python floats, as mergekit
    empty = np.nonzero((host_sizes > 0) & (host_keep == 0))[0]
    if empty.size:
        raise ConfigError(f"density {density} keeps no entry of tensor {int(empty[0])} ({int(host_sizes[empty[0]])} "
                          "entries); raise the density (mergekit refuses this too).")
    sizes, keep = jnp.asarray(host_sizes), jnp.asarray(host_keep)
    index = jnp.arange(tensor_ids.shape[0])

    def one(tau):
        order = jnp.lexsort((index, -jnp.abs(tau), tensor_ids))   # by tensor, then |tau| descending, then index
        starts = jnp.cumsum(sizes) - sizes
        sorted_ids = tensor_ids[order]
        rank = jnp.arange(order.shape[0]) - starts[sorted_ids]
        kept_sorted = rank < keep[sorted_ids]
        return jnp.zeros(tau.shape, bool).at[order].set(kept_sorted)

    return jax.vmap(one)(task_vectors)


def dare_keep_masks(key, num_models: int, size: int, density: float) -> jax.Array:
    """Keep-masks [K, D] for DARE: each entry kept with probability ``density`` (mergekit's Bernoulli)."""
    _check_density(density)
    if density >= 1:
        return jnp.ones((num_models, size), bool)
    return jax.random.uniform(key, (num_models, size)) < density


def rescale_l1(task_vectors, masks, tensor_ids, num_tensors: int | None = None) -> jax.Array:
    """Masked task vectors, each tensor scaled by ||tau||_1 / ||masked tau||_1 (mergekit's RescaleNorm.l1).

    A tensor whose L1 norm before or after masking is below 1e-7 is left unscaled.
    """
    n = _count(tensor_ids, num_tensors)
    masked = jnp.where(masks, task_vectors, 0)
    before = _segment_sum(jnp.abs(task_vectors), tensor_ids, n)
    after = _segment_sum(jnp.abs(masked), tensor_ids, n)
    ok = (before >= RESCALE_EPS) & (after >= RESCALE_EPS)
    factor = jnp.where(ok, before / jnp.where(ok, after, 1), 1)
    return masked * jnp.take(factor, tensor_ids, axis=1)


def _consensus_mask(weighted):
    """mergekit's 'sum' sign vote: elected sign + where sum_k w_k tau_k >= 0; entries of that sign agree."""
    elected = jnp.where(jnp.sum(weighted, axis=0) >= 0, 1, -1).astype(weighted.dtype)
    return jnp.sign(weighted) == elected


def _general(base, deltas, weights, *, consensus: bool, normalize: bool, scale: float):
    """mergekit's generalized task arithmetic once the deltas are sparsified."""
    w = _weights(weights, deltas.shape[0], deltas.dtype)[:, None]
    weighted = deltas * w
    if consensus:
        mask = _consensus_mask(weighted)
        mixed = jnp.sum(jnp.where(mask, weighted, 0), axis=0)
        divisor = jnp.sum(jnp.where(mask, w, 0), axis=0)
        divisor = jnp.where(divisor == 0, 1, divisor)
    else:
        mixed = jnp.sum(weighted, axis=0)
        divisor = jnp.sum(w)
        divisor = jnp.where(jnp.abs(divisor) < DIVISOR_EPS, 1, divisor)
    if normalize:
        mixed = mixed / divisor
    return base + scale * mixed


def ties(base, finetuned, tensor_ids, *, density: float = 1.0, scale: float = 1.0, weights=None,
         normalize: bool = True, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``ties`` (Yadav et al., 2023): trim per tensor, elect sign, disjoint mean.

    Per model and tensor keep the int(density * n) largest |tau|; the elected
    sign of a coordinate is that of sum_k w_k tau_k (zero counts as +); the
    merge adds ``scale`` times sum of the agreeing w_k tau_k divided by the sum
    of their weights (the disjoint mean; 1 where none agrees).
    """
    tau = finetuned - base
    masks = magnitude_masks(tau, tensor_ids, density, num_tensors)
    return _general(base, jnp.where(masks, tau, 0), weights, consensus=True, normalize=normalize, scale=scale)


def dare_linear(base, finetuned, tensor_ids, masks, *, scale: float = 1.0, weights=None, rescale: bool = True,
                normalize: bool = False, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``dare_linear`` (Yu et al., 2024): drop by ``masks``, rescale by the L1 ratio per tensor, sum.

    ``masks`` [K, D] from :func:`dare_keep_masks`; ``rescale=False`` keeps the
    dropped vectors unscaled.
    """
    deltas = _dare_deltas(finetuned - base, masks, tensor_ids, rescale, num_tensors)
    return _general(base, deltas, weights, consensus=False, normalize=normalize, scale=scale)


def dare_ties(base, finetuned, tensor_ids, masks, *, scale: float = 1.0, weights=None, rescale: bool = True,
              normalize: bool = False, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``dare_ties``: DARE's drop and rescale, then TIES's sign vote; agreeing entries summed (no mean)."""
    deltas = _dare_deltas(finetuned - base, masks, tensor_ids, rescale, num_tensors)
    return _general(base, deltas, weights, consensus=True, normalize=normalize, scale=scale)


def _dare_deltas(tau, masks, tensor_ids, rescale, num_tensors):
    if masks.shape != tau.shape:
        raise ConfigError(f"DARE masks have shape {masks.shape}, expected {tau.shape} (one row per fine-tuned model).")
    return rescale_l1(tau, masks, tensor_ids, num_tensors) if rescale else jnp.where(masks, tau, 0)


# ---------------------------------------------------------------- SLERP and Model Stock (per tensor)
def slerp(a, b, t, tensor_ids, *, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``slerp`` per tensor from ``a`` (t = 0; mergekit's base model) to ``b`` (t = 1).

    ``t`` is a scalar or one value per tensor [num_tensors]. Each tensor is
    normalised (unless its norm is <= 1e-8), and where |cos| > 0.9995 the
    tensors are linearly interpolated instead. Not M2N2's crossover, which
    takes one angle over the whole vector (:func:`m2n2_jax.algorithm.crossover.slerp`).
    """
    n = _count(tensor_ids, num_tensors)
    t = jnp.asarray(t, a.dtype)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ConfigError(f"t has shape {t.shape}; pass one number, or one per tensor ({n},).")
    t = jnp.broadcast_to(t, (n,))
    na = jnp.sqrt(jax.ops.segment_sum(a * a, tensor_ids, n))
    nb = jnp.sqrt(jax.ops.segment_sum(b * b, tensor_ids, n))
    da = jnp.where(na > SLERP_NORM_EPS, na, 1)
    db = jnp.where(nb > SLERP_NORM_EPS, nb, 1)
    dot = jax.ops.segment_sum(a * b, tensor_ids, n) / (da * db)
    colinear = jnp.abs(dot) > SLERP_DOT_THRESHOLD
    theta = jnp.arccos(jnp.clip(dot, -1, 1))
    sin_theta = jnp.where(colinear, 1, jnp.sin(theta))
    s0 = jnp.where(colinear, 1 - t, jnp.sin(theta - theta * t) / sin_theta)
    s1 = jnp.where(colinear, t, jnp.sin(theta * t) / sin_theta)
    return s0[tensor_ids] * a + s1[tensor_ids] * b


def model_stock(base, finetuned, tensor_ids, *, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``model_stock`` (Jang et al., 2024), per tensor.

    cos = the mean over pairs of fine-tunes of the cosine between their task
    vectors (norm product clamped to >= 1e-6), t = K cos / (1 + (K - 1) cos),
    merge = t * mean_k theta_k + (1 - t) * base. Needs K >= 2 fine-tunes.
    Where 1 + (K - 1) cos = 0 (two opposite task vectors) mergekit divides by
    zero; here t = 0 there (the tensor stays at the base).
    """
    k = finetuned.shape[0]
    if k < 2:
        raise ConfigError(f"model_stock needs at least two fine-tuned models besides the base (got {k}).")
    n = _count(tensor_ids, num_tensors)
    tau = finetuned - base
    norms = jnp.sqrt(_segment_sum(tau * tau, tensor_ids, n))  # [K, n]
    cosines = []
    for i in range(k):
        for j in range(i + 1, k):
            dot = jax.ops.segment_sum(tau[i] * tau[j], tensor_ids, n)
            cosines.append(jnp.clip(dot / jnp.maximum(norms[i] * norms[j], MODEL_STOCK_NORM_EPS), -1, 1))
    cos = jnp.mean(jnp.stack(cosines), axis=0)
    denominator = 1 + (k - 1) * cos
    t = jnp.where(denominator == 0, 0, k * cos / jnp.where(denominator == 0, 1, denominator))
    return t[tensor_ids] * jnp.mean(finetuned, axis=0) + (1 - t[tensor_ids]) * base


# ---------------------------------------------------------------- earlier variants, kept by name
def trim_threshold(task_vector, density: float) -> jax.Array:
    """Magnitude of the ceil(density * D)-th largest entry of |task_vector| (whole vector)."""
    _check_density(density)
    keep = max(1, math.ceil(density * task_vector.shape[0]))
    return jnp.sort(jnp.abs(task_vector))[task_vector.shape[0] - keep]


def ties_global(base, finetuned, density: float = 0.2, scale: float = 1.0) -> jax.Array:
    """TIES as the TIES authors' code trims: over the whole flattened model.

    Each task vector keeps its ceil(density * D) entries of largest magnitude
    (ties at the threshold kept); the sign of sum_k tau_k is elected (a zero
    sum elects nothing); the unweighted mean of the agreeing trimmed values is
    added, times ``scale``.
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
    """Keep-masks [K, D] for :func:`dare_rescale_legacy`: each entry kept with probability 1 - drop."""
    if not 0 <= drop < 1:
        raise ConfigError(f"drop must be in [0, 1) (got {drop}); it is the fraction of task-vector entries dropped.")
    return jax.random.uniform(key, (num_models, size)) >= drop


def dare_rescale_legacy(base, finetuned, masks, drop: float, scale: float = 1.0) -> jax.Array:
    """DARE as mergekit did before 2025: drop, rescale by 1 / (1 - drop), sum."""
    tau = jnp.where(masks, finetuned - base, 0) / (1.0 - drop)
    return base + scale * jnp.sum(tau, axis=0)


def grouped_task_arithmetic(base, finetuned, groups, weights) -> jax.Array:
    """base + sum_k weights[groups[d], k] * tau_k[d]: one coefficient per model and group.

    groups [D] assigns each coordinate to a group (e.g. its layer); weights is [G, K].
    """
    per_coordinate = jnp.asarray(weights)[groups]  # [D, K]
    return base + jnp.sum(per_coordinate.T * (finetuned - base), axis=0)
