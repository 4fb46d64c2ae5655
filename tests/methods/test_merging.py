"""Task arithmetic, linear and grouped task arithmetic against numpy.

mergekit's per-tensor merges are tested in test_classic_merges.py.
"""
import jax.numpy as jnp
import numpy as np

from m2n2_jax.methods import classic_merges as merging
from m2n2_jax.algorithm.flatten import VectorLayout


def models(seed=0, k=3, d=50):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d).astype(np.float32)
    return base, (base + rng.normal(size=(k, d))).astype(np.float32)


def test_task_arithmetic_linear_and_grouped():
    base, ft = models(2, k=2, d=6)
    np.testing.assert_allclose(merging.task_arithmetic(base, ft, 0.5, weights=[1, 1]), base + 0.5 * (ft - base).sum(0), rtol=1e-6)
    np.testing.assert_allclose(merging.linear(jnp.asarray(ft), [0.25, 0.75]), 0.25 * ft[0] + 0.75 * ft[1], rtol=1e-6)
    layout = VectorLayout.of({"a": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)})
    groups = merging.leaf_groups(layout)
    assert groups.tolist() == [0, 0, 0, 0, 1, 1]
    weights = np.array([[1.0, 0.0], [0.5, 2.0]])
    want = base + np.where(np.arange(6) < 4, 1.0 * (ft[0] - base), 0.5 * (ft[0] - base) + 2.0 * (ft[1] - base))
    np.testing.assert_allclose(merging.grouped_task_arithmetic(base, ft, groups, weights), want, rtol=1e-5)
