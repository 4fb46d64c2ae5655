"""Classic model merges on flat parameter vectors, with mergekit's semantics.

Vectors have length D (a model flattened with
:class:`~m2n2_jax.algorithm.flatten.VectorLayout`): ``base`` is the shared
pre-trained model, ``finetuned`` [K, D] the specialists, task vectors
``tau_k = finetuned_k - base``. mergekit works tensor by tensor, so trimming,
rescaling, SLERP angles and Model Stock's cosine are computed per tensor: the
functions take ``tensor_ids`` [D], the tensor (leaf) each coordinate belongs to
(:func:`leaf_groups` of a layout or :func:`ids_from_sizes`): contiguous
tensors, ids non-decreasing.

Semantics are mergekit 0.1.5's: density 1 (no trimming) unless set, a
density that would keep no entry keeps one, TIES's sign vote counts a zero sum
as +, DARE rescales the kept entries by the L1 norm ratio, Model Stock keeps
the base where its denominator is below 1e-6 in magnitude, and ``weights``
(mergekit's ``weight``) has no default. Per-tensor sums are segmented scans
(a tree of additions, so their rounding error grows with log D, not D), in
float32 at least. These functions run inside ``jax.jit``; a mergekit YAML
merge runs tensor by tensor on the host instead
(:mod:`m2n2_jax.methods.tensor_merges`). See docs/baselines.md,
"Classic merges (mergekit semantics)".
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import ConfigError

SLERP_DOT_THRESHOLD = 0.9995  # mergekit: |cos| above this -> linear interpolation
SLERP_NORM_EPS = 1e-8         # mergekit: a tensor of norm <= eps is not normalised
RESCALE_EPS = 1e-7            # mergekit: no L1 rescaling when either norm is below this
MODEL_STOCK_NORM_EPS = 1e-6   # mergekit: the norm product is clamped to at least this
MODEL_STOCK_SINGULAR = 1e-6   # mergekit 0.1.5: |1 + (K - 1) cos| below this keeps the base
DIVISOR_EPS = 1e-8            # mergekit: a |sum of weights| below this divides by 1
_BLOCK = 64                   # entries per row of the blocked per-tensor sums


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


def kept_count(density: float, size: int) -> int:
    """Entries kept of a tensor of ``size`` at ``density``: int(density * size), at least 1 (mergekit 0.1.5)."""
    if density >= 1:
        return int(size)
    return max(1, int(density * int(size))) if size > 0 else 0


def _weights(weights, k: int, dtype) -> jax.Array:
    if weights is None:
        raise ConfigError("weights are required (mergekit's 'weight' has no default): pass one per model, "
                          "e.g. weights=[1.0, 1.0].")
    w = jnp.asarray(weights, dtype)
    if w.shape != (k,):
        raise ConfigError(f"weights has shape {w.shape}, expected ({k},): one weight per model.")
    return w


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1] (got {density}); it is the fraction of entries kept.")


@functools.partial(jax.jit, static_argnums=2)
def segment_sums(values, tensor_ids, num_tensors: int) -> jax.Array:
    """Per-tensor sums of the last axis of values [..., D] -> [..., num_tensors], ids non-decreasing.

    Pairwise in blocks of 64, in float32 or wider: entries are summed in rows of
    64 (a row inside one tensor is reduced at once; the few rows where a tensor
    ends are added entry by entry), and the row sums are reduced the same way,
    level after level. The rounding error grows with log D, where a scatter-add
    (``jax.ops.segment_sum``) accumulates one entry at a time and was 4.9 % off
    on 28M entries. Runs with traced ids too (the shapes depend on D only).
    """
    ids = jnp.asarray(tensor_ids)
    v = jnp.asarray(values)
    v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    out = jnp.zeros(v.shape[:-1] + (num_tensors,), v.dtype)
    size = v.shape[-1]
    if size <= _BLOCK:
        return out.at[..., ids].add(v, mode="drop")
    rows = -(-size // _BLOCK)
    pad = rows * _BLOCK - size
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)]).reshape(v.shape[:-1] + (rows, _BLOCK))
    ids = jnp.pad(ids, (0, pad), constant_values=num_tensors).reshape(rows, _BLOCK)  # padding: dropped
    whole = ids[:, 0] == ids[:, -1]
    # rows holding a tensor boundary: at most one per tensor (and the padded last row)
    mixed = jnp.nonzero(~whole, size=min(rows, num_tensors + 1), fill_value=rows)[0]
    mixed_ids = jnp.take(ids, mixed, axis=0, mode="fill", fill_value=num_tensors)
    mixed_values = jnp.take(v, mixed, axis=-2, mode="fill", fill_value=0)
    out = out.at[..., mixed_ids.reshape(-1)].add(mixed_values.reshape(v.shape[:-2] + (-1,)), mode="drop")
    row_sums = jnp.where(whole, jnp.sum(v, axis=-1), 0)
    return out + segment_sums(row_sums, ids[:, 0], num_tensors)   # row ids stay non-decreasing


# ---------------------------------------------------------------- linear / task arithmetic
def linear(models, weights, *, normalize: bool = True) -> jax.Array:
    """mergekit ``linear``: sum_k w_k theta_k, divided by sum_k w_k unless ``normalize`` is False."""
    w = _weights(weights, models.shape[0], models.dtype)
    out = jnp.tensordot(w, models, axes=1)
    return out / jnp.sum(w) if normalize else out


def task_arithmetic(base, finetuned, scale: float = 1.0, *, weights, normalize: bool = False) -> jax.Array:
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
    """Keep-masks [K, D]: per model and tensor, the max(1, int(density * n)) entries of largest |tau|.

    ``tensor_ids`` must be concrete (not traced): the counts are computed on the host.

    Equal magnitudes at the cut go to the lower coordinate index. mergekit
    orders them with torch's unstable CPU sort, which does the same for
    tensors of up to 16 entries and is implementation-defined beyond (so a
    mergekit merge can keep another of the tied entries; the count kept and
    the cut magnitude are the same). Density 1 keeps everything.
    """
    _check_density(density)
    if density >= 1:
        return jnp.ones(task_vectors.shape, bool)
    n = _count(tensor_ids, num_tensors)
    host_sizes = np.bincount(np.asarray(tensor_ids), minlength=n)
    host_keep = np.array([kept_count(density, int(size)) for size in host_sizes])  # Python floats, as mergekit
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
    before = segment_sums(jnp.abs(task_vectors), tensor_ids, n)
    after = segment_sums(jnp.abs(masked), tensor_ids, n)
    ok = (before >= RESCALE_EPS) & (after >= RESCALE_EPS)
    factor = jnp.where(ok, before / jnp.where(ok, after, 1), 1)
    return (masked * jnp.take(factor, tensor_ids, axis=-1)).astype(task_vectors.dtype)


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


def ties(base, finetuned, tensor_ids, *, weights, density: float = 1.0, scale: float = 1.0,
         normalize: bool = True, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``ties`` (Yadav et al., 2023): trim per tensor, elect sign, disjoint mean.

    Per model and tensor keep the max(1, int(density * n)) largest |tau|; the
    elected sign of a coordinate is that of sum_k w_k tau_k (zero counts as
    +); the merge adds ``scale`` times sum of the agreeing w_k tau_k divided by
    the sum of their weights (the disjoint mean; 1 where none agrees).
    """
    tau = finetuned - base
    masks = magnitude_masks(tau, tensor_ids, density, num_tensors)
    return _general(base, jnp.where(masks, tau, 0), weights, consensus=True, normalize=normalize, scale=scale)


def dare_linear(base, finetuned, tensor_ids, masks, *, weights, scale: float = 1.0, rescale: bool = True,
                normalize: bool = False, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``dare_linear`` (Yu et al., 2024): drop by ``masks``, rescale by the L1 ratio per tensor, sum.

    ``masks`` [K, D] from :func:`dare_keep_masks`; ``rescale=False`` keeps the
    dropped vectors unscaled.
    """
    deltas = _dare_deltas(finetuned - base, masks, tensor_ids, rescale, num_tensors)
    return _general(base, deltas, weights, consensus=False, normalize=normalize, scale=scale)


def dare_ties(base, finetuned, tensor_ids, masks, *, weights, scale: float = 1.0, rescale: bool = True,
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
    tensors are linearly interpolated instead. Angles and coefficients are
    computed in float32 at least, as mergekit does. Not M2N2's crossover,
    which takes one angle over the whole vector
    (:func:`m2n2_jax.algorithm.crossover.slerp`).
    """
    n = _count(tensor_ids, num_tensors)
    work = jnp.promote_types(a.dtype, jnp.float32)
    t = jnp.asarray(t, work)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
        raise ConfigError(f"t has shape {t.shape}; pass one number, or one per tensor ({n},).")
    t = jnp.broadcast_to(t, (n,))
    a32, b32 = a.astype(work), b.astype(work)
    sums = segment_sums(jnp.stack([a32 * a32, b32 * b32, a32 * b32]), tensor_ids, n)
    na, nb = jnp.sqrt(sums[0]), jnp.sqrt(sums[1])
    da = jnp.where(na > SLERP_NORM_EPS, na, 1)
    db = jnp.where(nb > SLERP_NORM_EPS, nb, 1)
    dot = jnp.clip(sums[2] / (da * db), -1, 1)
    colinear = jnp.abs(dot) > SLERP_DOT_THRESHOLD
    theta = jnp.arccos(jnp.where(colinear, 0, dot))
    sin_theta = jnp.where(colinear, 1, jnp.sin(theta))
    s0 = jnp.where(colinear, 1 - t, jnp.sin((1 - t) * theta) / sin_theta)
    s1 = jnp.where(colinear, t, jnp.sin(t * theta) / sin_theta)
    return (s0[tensor_ids] * a32 + s1[tensor_ids] * b32).astype(a.dtype)


def model_stock(base, finetuned, tensor_ids, *, num_tensors: int | None = None) -> jax.Array:
    """mergekit ``model_stock`` (Jang et al., 2024), per tensor.

    cos = the mean over pairs of fine-tunes of the cosine between their task
    vectors (norm product clamped to >= 1e-6), t = K cos / (1 + (K - 1) cos),
    merge = t * mean_k theta_k + (1 - t) * base. Needs K >= 2 fine-tunes.
    Where |1 + (K - 1) cos| < 1e-6 (e.g. two opposite task vectors) t = 0:
    the tensor stays at the base, as in mergekit 0.1.5.
    """
    k = finetuned.shape[0]
    if k < 2:
        raise ConfigError(f"model_stock needs at least two fine-tuned models besides the base (got {k}).")
    n = _count(tensor_ids, num_tensors)
    tau = finetuned - base
    work = jnp.promote_types(tau.dtype, jnp.float32)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    products = jnp.stack([tau[i].astype(work) * tau[j].astype(work) for i, j in [(i, i) for i in range(k)] + pairs])
    sums = segment_sums(products, tensor_ids, n)
    norms = jnp.sqrt(sums[:k])  # [K, n]
    cosines = [jnp.clip(sums[k + p] / jnp.maximum(norms[i] * norms[j], MODEL_STOCK_NORM_EPS), -1, 1)
               for p, (i, j) in enumerate(pairs)]
    cos = jnp.mean(jnp.stack(cosines), axis=0)
    denominator = 1 + (k - 1) * cos
    singular = jnp.abs(denominator) < MODEL_STOCK_SINGULAR
    t = jnp.where(singular, 0, k * cos / jnp.where(singular, 1, denominator))[tensor_ids].astype(base.dtype)
    return t * jnp.mean(finetuned, axis=0) + (1 - t) * base


def grouped_task_arithmetic(base, finetuned, groups, weights) -> jax.Array:
    """base + sum_k weights[groups[d], k] * tau_k[d]: one coefficient per model and group.

    groups [D] assigns each coordinate to a group (e.g. its layer); weights is [G, K].
    """
    per_coordinate = jnp.asarray(weights)[groups]  # [D, K]
    return base + jnp.sum(per_coordinate.T * (finetuned - base), axis=0)
