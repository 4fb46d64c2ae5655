"""Parameter groups with their own split points: against a per-group numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.algorithm.groups import GroupSpec, draw_group_splits, grouped_crossover
from m2n2_jax.algorithm.strategy import M2N2, _make_child


def numpy_grouped_child(x, y, ids, splits, ratios):
    """Plain reference: per group, its coordinates in flat order; the first s_g get w_g, the rest 1 - w_g;
    SLERP with the angle between the whole vectors, per coordinate, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    t = np.empty_like(x)
    for g in range(len(splits)):
        idx = np.flatnonzero(ids == g)
        t[idx[:splits[g]]] = ratios[g]
        t[idx[splits[g]:]] = 1.0 - ratios[g]
    omega = np.arccos(np.clip(x @ y / np.linalg.norm(x) / np.linalg.norm(y), -1, 1))
    return (np.sin((1 - t) * omega) * x + np.sin(t * omega) * y) / np.sin(omega)


def interleaved_ids(size, rng):
    ids = (rng.random(size) < 0.4).astype(np.int64)
    ids[rng.random(size) < 0.2] = 2
    return ids


@pytest.mark.parametrize("seed", range(4))
def test_grouped_crossover_matches_the_per_group_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    size = 300
    ids = interleaved_ids(size, rng)
    spec = GroupSpec.from_ids(ids, ["attention", "other", "third"])
    assert np.array_equal(spec.ids(), ids) and spec.size == size
    x = jnp.asarray(rng.normal(size=size), jnp.float32)
    y = jnp.asarray(rng.normal(size=size), jnp.float32)
    key = jax.random.PRNGKey(seed)
    splits, ratios = draw_group_splits(key, spec)
    splits, ratios = np.asarray(splits), np.asarray(ratios, np.float64)
    assert np.all(splits >= 0) and np.all(splits < np.bincount(ids)) and np.all((ratios > 0) & (ratios < 1))
    child = grouped_crossover(key, x, y, spec)
    np.testing.assert_allclose(np.asarray(child), numpy_grouped_child(x, y, ids, splits, ratios),
                               rtol=1e-4, atol=1e-5)


def test_groups_draw_their_own_split_points_and_ratios():
    spec = GroupSpec.from_ids(np.repeat([0, 1], [50, 70]))
    draws = [draw_group_splits(jax.random.PRNGKey(k), spec) for k in range(200)]
    splits = np.array([np.asarray(s) for s, _ in draws])
    ratios = np.array([np.asarray(r) for _, r in draws])
    assert splits[:, 0].max() < 50 and splits[:, 1].max() < 70 and splits[:, 1].max() >= 50
    assert np.mean(splits[:, 0] != splits[:, 1]) > 0.9 and np.mean(ratios[:, 0] != ratios[:, 1]) > 0.99
    assert abs(np.corrcoef(ratios[:, 0], ratios[:, 1])[0, 1]) < 0.3


@pytest.mark.parametrize("use_split_point", [True, False])
def test_one_group_is_the_engine_crossover(use_split_point):
    rng = np.random.default_rng(7)
    x, y = (jnp.asarray(rng.normal(size=97), jnp.float32) for _ in range(2))
    spec = GroupSpec.single(97)
    for k in range(5):
        key = jax.random.PRNGKey(k)
        np.testing.assert_allclose(np.asarray(grouped_crossover(key, x, y, spec, use_split_point)),
                                   np.asarray(xo.crossover(key, x, y, use_split_point)), rtol=1e-6, atol=1e-7)


def test_without_split_point_each_group_gets_one_ratio():
    rng = np.random.default_rng(3)
    ids = interleaved_ids(120, rng)
    spec = GroupSpec.from_ids(ids)
    x, y = (jnp.asarray(rng.normal(size=120), jnp.float32) for _ in range(2))
    key = jax.random.PRNGKey(5)
    _, ratios = draw_group_splits(key, spec, use_split_point=False)
    want = numpy_grouped_child(x, y, ids, np.bincount(ids), np.asarray(ratios, np.float64))
    np.testing.assert_allclose(np.asarray(grouped_crossover(key, x, y, spec, False)), want, rtol=1e-4, atol=1e-5)


def test_the_engine_uses_the_groups_of_its_config():
    rng = np.random.default_rng(11)
    ids = interleaved_ids(64, rng)
    spec = GroupSpec.from_ids(ids)
    seeds = jnp.asarray(rng.normal(size=(3, 64)), jnp.float32)
    scores = jnp.asarray(rng.random((3, 10)), jnp.float32)
    config = M2N2Config(archive_size=4, mutation_std=0.0, groups=spec)
    strategy = M2N2(config, seeds[0])
    params = strategy.default_params
    state = strategy.init(jax.random.PRNGKey(0), seeds, scores, params)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    child = _make_child(config, state, params, keys)
    a, b = niches.select_parents(keys[0], state.scores, state.capacity, params.alpha, True)
    splits, ratios = draw_group_splits(keys[1], spec)
    want = numpy_grouped_child(state.params[a], state.params[b], ids, np.asarray(splits), np.asarray(ratios))
    np.testing.assert_allclose(np.asarray(child), want, rtol=1e-4, atol=1e-5)
    plain = _make_child(config.replace(groups=None), state, params, keys)
    assert not np.allclose(np.asarray(child), np.asarray(plain))


def test_groups_from_a_pytree_and_bad_specs():
    params = {"attn": {"k": jnp.zeros((2, 3))}, "dense": {"w": jnp.zeros(4)}, "out": jnp.zeros(2)}
    layout = VectorLayout.of(params)
    spec = GroupSpec.from_params(layout, params, lambda path: 0 if "attn" in path else 1, ["attention", "other"])
    assert list(spec.sizes()) == [6, 6] and spec.num_groups == 2
    with pytest.raises(ConfigError):
        GroupSpec.from_ids(np.array([0, 2, 2]))          # group 1 empty
    with pytest.raises(ConfigError):
        GroupSpec.from_ids(np.array([0.5, 1.0]))
    with pytest.raises(ConfigError):
        grouped_crossover(jax.random.PRNGKey(0), jnp.ones(5), jnp.ones(5), spec)
