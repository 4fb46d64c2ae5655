"""Classic merges (mergekit semantics) against plain numpy ports of the published formulas.

The ports below loop over tensors and coordinates in float64, written from
the papers' and mergekit's definitions (not from the JAX code). Test data
are multiples of 1/8, so that task vectors are exact in float32 and the
magnitude ranking cannot differ between the port and the JAX code.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods import classic_merges as cm

SIZES = [6, 10, 1, 7]            # four tensors, one of a single entry
TOL = dict(rtol=1e-5, atol=1e-6)


def tensors_of(sizes=SIZES):
    edges = np.cumsum([0] + list(sizes))
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def grid_models(seed=0, k=3, sizes=SIZES):
    """base and fine-tunes on a 1/8 grid (exact in float32)."""
    rng = np.random.default_rng(seed)
    d = sum(sizes)
    base = rng.integers(-16, 17, size=d) / 8
    ft = base + rng.integers(-12, 13, size=(k, d)) / 8
    return base.astype(np.float32), ft.astype(np.float32)


def ids(sizes=SIZES):
    return cm.ids_from_sizes(sizes)


# ------------------------------------------------------------- numpy ports
def np_linear(models, w, normalize=True):
    out = sum(wk * m.astype(np.float64) for wk, m in zip(w, models))
    return out / sum(w) if normalize else out


def np_topk_mask(t, density):
    """int(density * n) entries of largest |t|; equal magnitudes: lower index first."""
    n = t.size
    if density >= 1:
        return np.ones(n, bool)
    keep = max(1, int(density * n))    # mergekit 0.1.5 keeps at least one entry
    mask = np.zeros(n, bool)
    candidates = list(range(n))
    for _ in range(keep):          # repeatedly take the largest remaining magnitude, lowest index on ties
        best = candidates[0]
        for i in candidates[1:]:
            if abs(t[i]) > abs(t[best]):
                best = i
        mask[best] = True
        candidates.remove(best)
    return mask


def np_ties(base, ft, density, scale=1.0, w=None, sizes=SIZES):
    base = base.astype(np.float64)
    k = ft.shape[0]
    w = np.ones(k) if w is None else np.asarray(w, float)
    out = base.copy()
    for sl in tensors_of(sizes):
        taus = [ft[m, sl].astype(np.float64) - base[sl] for m in range(k)]
        trimmed = [np.where(np_topk_mask(t, density), t, 0.0) for t in taus]
        for j in range(sl.stop - sl.start):
            vals = [w[m] * trimmed[m][j] for m in range(k)]
            elected = 1.0 if sum(vals) >= 0 else -1.0          # a zero sum elects +
            num = den = 0.0
            for m in range(k):
                if vals[m] != 0 and np.sign(vals[m]) == elected:
                    num += vals[m]
                    den += w[m]
            out[sl.start + j] += scale * (num / den if den != 0 else num)
    return out


def np_dare(base, ft, masks, scale=1.0, w=None, ties=False, sizes=SIZES):
    base = base.astype(np.float64)
    k = ft.shape[0]
    w = np.ones(k) if w is None else np.asarray(w, float)
    out = base.copy()
    for sl in tensors_of(sizes):
        deltas = []
        for m in range(k):
            t = ft[m, sl].astype(np.float64) - base[sl]
            kept = np.where(masks[m, sl], t, 0.0)
            l1_before, l1_after = np.abs(t).sum(), np.abs(kept).sum()
            if l1_before >= 1e-7 and l1_after >= 1e-7:
                kept = kept * (l1_before / l1_after)
            deltas.append(w[m] * kept)
        for j in range(sl.stop - sl.start):
            vals = [d[j] for d in deltas]
            if ties:
                elected = 1.0 if sum(vals) >= 0 else -1.0
                vals = [v for v in vals if v != 0 and np.sign(v) == elected]
            out[sl.start + j] += scale * sum(vals)
    return out


def np_slerp(a, b, t, sizes=SIZES):
    out = np.zeros(a.size)
    ts = np.broadcast_to(np.asarray(t, float), (len(sizes),))
    for i, sl in enumerate(tensors_of(sizes)):
        v0, v1 = a[sl].astype(np.float64), b[sl].astype(np.float64)
        n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
        u0 = v0 / n0 if n0 > 1e-8 else v0
        u1 = v1 / n1 if n1 > 1e-8 else v1
        dot = float(np.sum(u0 * u1))
        if abs(dot) > 0.9995:
            out[sl] = (1 - ts[i]) * v0 + ts[i] * v1
            continue
        theta = np.arccos(dot)
        out[sl] = (np.sin(theta * (1 - ts[i])) * v0 + np.sin(theta * ts[i]) * v1) / np.sin(theta)
    return out


def np_model_stock(base, ft, sizes=SIZES):
    k = ft.shape[0]
    out = np.zeros(base.size)
    for sl in tensors_of(sizes):
        w0 = base[sl].astype(np.float64)
        offsets = [ft[m, sl].astype(np.float64) - w0 for m in range(k)]
        cosines = []
        for i in range(k):
            for j in range(i + 1, k):
                norm = max(np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j]), 1e-6)
                cosines.append(np.clip(np.dot(offsets[i], offsets[j]) / norm, -1, 1))
        cos = np.mean(cosines)
        t = 0.0 if abs(1 + (k - 1) * cos) < 1e-6 else k * cos / (1 + (k - 1) * cos)   # mergekit 0.1.5's guard
        avg = np.mean([ft[m, sl].astype(np.float64) for m in range(k)], axis=0)
        out[sl] = t * avg + (1 - t) * w0
    return out


# ------------------------------------------------------------- tests
def test_linear_and_task_arithmetic():
    base, ft = grid_models()
    w = [0.5, 2.0, 1.5]
    np.testing.assert_allclose(cm.linear(jnp.asarray(ft), w), np_linear(ft, w), **TOL)
    np.testing.assert_allclose(cm.linear(jnp.asarray(ft), w, normalize=False), np_linear(ft, w, False), **TOL)
    np.testing.assert_allclose(cm.linear(jnp.asarray(ft), [1, 1, 1]), ft.astype(np.float64).mean(0), **TOL)
    with pytest.raises(ConfigError, match="weights are required"):
        cm.linear(jnp.asarray(ft), None)
    want = base + 0.7 * sum(wk * (f.astype(np.float64) - base) for wk, f in zip(w, ft))
    np.testing.assert_allclose(cm.task_arithmetic(jnp.asarray(base), jnp.asarray(ft), 0.7, weights=w), want, **TOL)
    np.testing.assert_allclose(cm.task_arithmetic(base, ft, 0.7, weights=w, normalize=True),
                               base + (want - base) / 4.0, **TOL)


@pytest.mark.parametrize("density,scale,w", [(0.5, 1.0, [1, 1, 1]), (0.3, 0.8, [1.0, 0.5, 2.0]), (1.0, 1.0, [1, 1, 1]),
                                             (0.7, 1.2, [1.0, 1.0, 1.0])])
def test_ties_per_tensor(density, scale, w):
    base, ft = grid_models(1, sizes=[6, 10, 7])
    got = cm.ties(jnp.asarray(base), jnp.asarray(ft), ids([6, 10, 7]), density=density, scale=scale, weights=w)
    np.testing.assert_allclose(got, np_ties(base, ft, density, scale, w, sizes=[6, 10, 7]), **TOL)


def test_ties_trims_per_tensor_not_globally():
    """One tensor with large deltas, one with small: global trimming would empty the small one."""
    base = np.zeros(8, np.float32)
    ft = np.array([[8, 7, 6, 5, .4, .3, .2, .1], [-1, 1, 2, 3, .1, .2, .3, .4]], np.float32)
    got = np.asarray(cm.ties(base, jnp.asarray(ft), ids([4, 4]), density=0.5, weights=[1, 1]))
    np.testing.assert_allclose(got, np_ties(base, ft, 0.5, sizes=[4, 4]), **TOL)
    assert np.count_nonzero(got[4:]) == 4      # each small-tensor coordinate survives in one model


def test_ties_sign_vote_tie_goes_to_plus():
    """tau = (+1, -1) at a coordinate: the sum is 0, + is elected, the merge takes +1 (the disjoint mean)."""
    base = np.zeros(3, np.float32)
    ft = np.array([[1.0, 2.0, -3.0], [-1.0, -2.0, 1.0]], np.float32)
    got = np.asarray(cm.ties(base, jnp.asarray(ft), ids([3]), weights=[1, 1]))
    np.testing.assert_allclose(got, [1.0, 2.0, -3.0], **TOL)
    np.testing.assert_allclose(got, np_ties(base, ft, 1.0, sizes=[3]), **TOL)


def test_ties_magnitude_ties_and_density_errors():
    base = np.zeros(4, np.float32)
    ft = np.array([[1.0, -1.0, 1.0, 0.5]], np.float32)        # three equal magnitudes, keep int(0.5 * 4) = 2
    masks = np.asarray(cm.magnitude_masks(jnp.asarray(ft), ids([4]), 0.5))
    assert masks.tolist() == [[True, True, False, False]] == [np_topk_mask(ft[0], 0.5).tolist()]
    # a density that keeps no entry of the one-entry tensor keeps one (mergekit 0.1.5)
    ft3 = np.array([[1, 2, 3, 4, 5, 6, -7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 0.5]], np.float32)
    masks = np.asarray(cm.magnitude_masks(jnp.asarray(ft3), ids(SIZES[:3]), 0.05))
    assert masks.sum() == 3 and masks[0, 16] and masks[0, 5] and masks[0, 8]
    with pytest.raises(ConfigError, match="density"):
        cm.ties(jnp.zeros(17), jnp.ones((2, 17)), ids(SIZES[:3]), density=0.0, weights=[1, 1])


@pytest.mark.parametrize("with_ties", [False, True])
@pytest.mark.parametrize("density,scale,w", [(0.5, 1.0, [1, 1, 1]), (0.3, 0.6, [1.0, 2.0, 0.5]), (1.0, 1.0, [1, 1, 1])])
def test_dare_per_tensor(with_ties, density, scale, w):
    base, ft = grid_models(2)
    masks = cm.dare_keep_masks(jax.random.PRNGKey(3), 3, base.size, density)
    fn = cm.dare_ties if with_ties else cm.dare_linear
    got = fn(jnp.asarray(base), jnp.asarray(ft), ids(), masks, scale=scale, weights=w)
    np.testing.assert_allclose(got, np_dare(base, ft, np.asarray(masks), scale, w, with_ties), **TOL)


def test_dare_l1_rescale_keeps_each_tensors_l1_norm():
    base, ft = grid_models(4, k=1)
    masks = cm.dare_keep_masks(jax.random.PRNGKey(0), 1, base.size, 0.5)
    assert 0.25 < float(jnp.mean(masks)) < 0.75
    merged = np.asarray(cm.dare_linear(base, jnp.asarray(ft), ids(), masks, weights=[1])) - base
    for sl in tensors_of():
        if np.asarray(masks)[0, sl].any():
            np.testing.assert_allclose(np.abs(merged[sl]).sum(), np.abs(ft[0, sl] - base[sl]).sum(), rtol=1e-5)
    # an entirely dropped tensor stays at the base, unscaled (mergekit's eps rule)
    none = jnp.zeros_like(masks)
    np.testing.assert_allclose(cm.dare_linear(base, jnp.asarray(ft), ids(), none, weights=[1]), base)


def test_all_zero_task_vectors_give_the_base():
    base, _ = grid_models(5)
    ft = np.stack([base, base])
    masks = cm.dare_keep_masks(jax.random.PRNGKey(0), 2, base.size, 0.5)
    tid = ids([6, 10, 8])
    w = [1, 1]
    for got in [cm.task_arithmetic(base, ft, weights=w), cm.ties(base, ft, tid, density=0.5, weights=w),
                cm.dare_linear(base, ft, tid, masks, weights=w), cm.dare_ties(base, ft, tid, masks, weights=w),
                cm.model_stock(base, ft, tid)]:
        np.testing.assert_allclose(got, base, **TOL)
    np.testing.assert_allclose(cm.model_stock(base, ft, tid), np_model_stock(base, ft, [6, 10, 8]), **TOL)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, [0.1, 0.9, 0.5, 0.25]])
def test_slerp_per_tensor(t):
    a, ft = grid_models(6, k=1)
    b = ft[0]
    np.testing.assert_allclose(cm.slerp(jnp.asarray(a), jnp.asarray(b), t, ids()), np_slerp(a, b, t), **TOL)


def test_slerp_colinear_and_zero_tensors():
    a = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 1.0, 0.0], np.float32)
    b = np.array([2.0, 4.0, 6.001, 0.0, 0.0, 0.0, 1.0], np.float32)   # tensor 0: |cos| > 0.9995; tensor 1: zeros
    sizes = [3, 2, 2]
    got = np.asarray(cm.slerp(jnp.asarray(a), jnp.asarray(b), 0.25, ids(sizes)))
    np.testing.assert_allclose(got, np_slerp(a, b, 0.25, sizes), **TOL)
    np.testing.assert_allclose(got[:3], 0.75 * a[:3] + 0.25 * b[:3], **TOL)        # the linear fallback
    np.testing.assert_allclose(got[5:], [np.cos(np.pi / 8), np.sin(np.pi / 8)], **TOL)  # a true quarter turn * 0.25


@pytest.mark.parametrize("k", [2, 3])
def test_model_stock_per_tensor(k):
    base, ft = grid_models(7, k=k)
    np.testing.assert_allclose(cm.model_stock(jnp.asarray(base), jnp.asarray(ft), ids()), np_model_stock(base, ft),
                               **TOL)
    with pytest.raises(ConfigError, match="at least two"):
        cm.model_stock(base, ft[:1], ids())


def test_model_stock_opposite_deltas_stay_finite():
    base = np.zeros(4, np.float32)
    ft = np.array([[1.0, 2.0, 1.0, 0.0], [-1.0, -2.0, 0.0, 1.0]], np.float32)   # tensor 0: cos = -1; tensor 1: cos = 0
    got = np.asarray(cm.model_stock(base, jnp.asarray(ft), ids([2, 2])))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_model_stock(base, ft, [2, 2]), **TOL)
    np.testing.assert_allclose(got, 0.0, atol=1e-7)


def test_model_stock_keeps_the_base_when_nearly_singular():
    """1 + cos = 4.8e-7 (below mergekit 0.1.5's 1e-6): the base, not K cos / (1 + cos) = -4e6."""
    base = np.zeros(2, np.float32)
    angle = np.arccos(-1 + 4.8e-7)
    ft = np.array([[1.0, 0.0], [np.cos(angle), np.sin(angle)]], np.float32)
    got = np.asarray(cm.model_stock(base, jnp.asarray(ft), ids([2])))
    np.testing.assert_array_equal(got, base)


def test_leaf_groups_follow_the_layout_order():
    params = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    assert cm.leaf_groups(VectorLayout.of(params)).tolist() == [0, 0, 0, 0, 1, 1]
    assert cm.leaf_groups(VectorLayout.of(params, order=[1, 0])).tolist() == [0, 0, 1, 1, 1, 1]


def test_slerp_refuses_a_t_per_tensor_of_the_wrong_length():
    a, ft = grid_models(8, k=1)
    with pytest.raises(ConfigError, match="one per tensor"):
        cm.slerp(jnp.asarray(a), jnp.asarray(ft[0]), [0.1, 0.2], ids())


def test_per_tensor_sums_are_accurate_for_large_tensors():
    """A 4M-entry tensor beside small ones: SLERP and Model Stock within 1e-6 of float64, DARE keeps L1 to 1e-6.

    A float32 scatter-add (the earlier ``jax.ops.segment_sum``) is about 1e-3 off on sums of this size.
    """
    rng = np.random.default_rng(11)
    sizes = [1 << 22, 576, 1000]
    d = sum(sizes)
    base = rng.normal(size=d).astype(np.float32)
    ft = (base + 0.01 * rng.normal(size=(2, d)) + 0.005 * rng.normal(size=d)).astype(np.float32)
    tid = ids(sizes)
    sums = np.asarray(cm.segment_sums(jnp.asarray(np.abs(ft)), tid, 3))
    want = np.stack([[np.abs(f[sl]).astype(np.float64).sum() for sl in tensors_of(sizes)] for f in ft])
    np.testing.assert_allclose(sums, want, rtol=1e-6)

    def close(got, ref):
        for sl in tensors_of(sizes):
            assert np.abs(np.asarray(got)[sl] - ref[sl]).max() <= 1e-6 * np.abs(ref[sl]).max()

    close(cm.slerp(jnp.asarray(base), jnp.asarray(ft[0]), 0.3, tid), np_slerp(base, ft[0], 0.3, sizes))
    close(cm.model_stock(jnp.asarray(base), jnp.asarray(ft), tid), np_model_stock(base, ft, sizes))
    masks = cm.dare_keep_masks(jax.random.PRNGKey(1), 2, d, 0.3)
    tau = ft - base
    rescaled = np.asarray(cm.rescale_l1(jnp.asarray(tau), masks, tid), np.float64)
    for sl in tensors_of(sizes):
        np.testing.assert_allclose(np.abs(rescaled[:, sl]).sum(1), np.abs(tau[:, sl].astype(np.float64)).sum(1),
                                   rtol=1e-6)
