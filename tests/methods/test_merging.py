"""The earlier merge variants (whole-model TIES, 1/(1-p) DARE) and grouped task arithmetic against numpy.

mergekit's per-tensor merges are tested in test_classic_merges.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.methods import classic_merges as merging
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.flatten import VectorLayout


def models(seed=0, k=3, d=50):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d).astype(np.float32)
    return base, (base + rng.normal(size=(k, d))).astype(np.float32)


def numpy_ties(base, ft, density, scale):
    tau = ft.astype(np.float64) - base
    d = tau.shape[1]
    keep = int(np.ceil(density * d))
    out = np.zeros(d)
    trimmed = np.zeros_like(tau)
    for k in range(tau.shape[0]):
        order = np.argsort(-np.abs(tau[k]), kind="stable")
        trimmed[k, order[:keep]] = tau[k, order[:keep]]
    for j in range(d):
        sign = np.sign(trimmed[:, j].sum())
        agree = [t for t in trimmed[:, j] if t != 0 and np.sign(t) == sign]
        out[j] = np.mean(agree) if agree else 0.0
    return base + scale * out


@pytest.mark.parametrize("density,scale", [(0.2, 1.0), (0.5, 0.7), (1.0, 1.0)])
def test_ties_matches_numpy(density, scale):
    base, ft = models()
    got = merging.ties_global(jnp.asarray(base), jnp.asarray(ft), density, scale)
    np.testing.assert_allclose(got, numpy_ties(base, ft, density, scale), rtol=1e-5, atol=1e-5)


def test_dare_matches_numpy():
    base, ft = models(1)
    masks = merging.dare_masks(jax.random.PRNGKey(0), 3, 50, 0.7)
    assert 0.1 < float(jnp.mean(masks)) < 0.5
    got = merging.dare_rescale_legacy(jnp.asarray(base), jnp.asarray(ft), masks, 0.7, 0.5)
    m = np.asarray(masks)
    want = base + 0.5 * ((ft.astype(np.float64) - base) * m / 0.3).sum(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="drop"):
        merging.dare_masks(jax.random.PRNGKey(0), 3, 50, 1.0)


def test_task_arithmetic_linear_and_grouped():
    base, ft = models(2, k=2, d=6)
    np.testing.assert_allclose(merging.task_arithmetic(base, ft, 0.5), base + 0.5 * (ft - base).sum(0), rtol=1e-6)
    np.testing.assert_allclose(merging.linear(jnp.asarray(ft), [0.25, 0.75]), 0.25 * ft[0] + 0.75 * ft[1], rtol=1e-6)
    layout = VectorLayout.of({"a": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)})
    groups = merging.leaf_groups(layout)
    assert groups.tolist() == [0, 0, 0, 0, 1, 1]
    weights = np.array([[1.0, 0.0], [0.5, 2.0]])
    want = base + np.where(np.arange(6) < 4, 1.0 * (ft[0] - base), 0.5 * (ft[0] - base) + 2.0 * (ft[1] - base))
    np.testing.assert_allclose(merging.grouped_task_arithmetic(base, ft, groups, weights), want, rtol=1e-5)
