"""CMA-ES over per-layer SLERP coefficients, and the layer grouping of a flattened Llama."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.errors import ConfigError
from m2n2_jax.llm import model
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.methods import classic_merges as cm
from m2n2_jax.methods import layer_cma


def tiny_llama(layers=12):
    config = LlamaConfig(vocab_size=11, hidden_size=4, intermediate_size=6, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1)
    return config, model.init_params(config)


@pytest.mark.parametrize("rest", ["one", "own"])
def test_layer_groups_name_each_coordinate_by_its_layer(rest):
    config, params = tiny_llama()          # 12 layers: layers_10 sorts before layers_2 in jax's own order
    layout = VectorLayout.of(params, order=tuple(reversed(range(len(jax.tree.leaves(params))))))  # any order
    groups = np.asarray(layer_cma.layer_groups(config, layout, rest))
    want, extra = [], {}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in (leaves[i] for i in layout.order):   # the coordinates in the layout's order
        top = path[0].key
        if top.startswith("layers_"):
            g = int(top.split("_")[1])
        elif rest == "one":
            g = 12
        else:
            g = 12 + extra.setdefault(top, len(extra))
        want += [g] * leaf.size
    assert groups.tolist() == want
    assert set(groups.tolist()) == set(range(13 if rest == "one" else 15))


def test_layer_groups_refuse_a_wrong_config():
    config, params = tiny_llama(3)
    with pytest.raises(ConfigError, match="beyond num_hidden_layers"):
        layer_cma.layer_groups(LlamaConfig(**{**config.__dict__, "num_hidden_layers": 2}), VectorLayout.of(params))


def np_layer_slerp(a, b, t_of_group, groups, tensor_ids):
    """Per tensor: mergekit's SLERP with the tensor's group coefficient (float64 loop)."""
    out = np.zeros(a.size)
    for tid in np.unique(tensor_ids):
        idx = np.nonzero(tensor_ids == tid)[0]
        t = float(np.clip(t_of_group[groups[idx[0]]], 0, 1))
        v0, v1 = a[idx].astype(np.float64), b[idx].astype(np.float64)
        n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
        dot = np.dot(v0 / n0, v1 / n1)
        if abs(dot) > 0.9995:
            out[idx] = (1 - t) * v0 + t * v1
        else:
            th = np.arccos(dot)
            out[idx] = (np.sin((1 - t) * th) * v0 + np.sin(t * th) * v1) / np.sin(th)
    return out


def test_layer_slerp_matches_numpy_per_tensor():
    rng = np.random.default_rng(0)
    sizes = [3, 5, 4, 2, 6]
    tensor_ids = np.asarray(cm.ids_from_sizes(sizes))
    groups = np.repeat([0, 0, 1, 2, 2], sizes)                # tensors 0-1: group 0, 2: group 1, 3-4: group 2
    seeds = rng.normal(size=(2, sum(sizes))).astype(np.float32)
    seeds[1, 8:12] = 2 * seeds[0, 8:12]                     # tensor 2 colinear: the linear fallback
    t = np.array([0.2, 1.4, -0.1])                          # outside [0, 1]: clipped
    got = layer_cma.layer_slerp(jnp.asarray(seeds), t[:, None], jnp.asarray(groups), jnp.asarray(tensor_ids))
    np.testing.assert_allclose(got, np_layer_slerp(seeds[0], seeds[1], t, groups, tensor_ids), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="more than one group"):
        layer_cma.tensor_groups(tensor_ids, np.repeat([0, 1], [4, 16]))


def quadratic_task(seed=0, sizes=(4, 6, 5, 3), target=(0.2, 0.8, 0.5, 0.35)):
    rng = np.random.default_rng(seed)
    tensor_ids = cm.ids_from_sizes(sizes)
    seeds = jnp.asarray(rng.normal(size=(2, sum(sizes))), jnp.float32)
    goal = layer_cma.layer_slerp(seeds, np.asarray(target)[:, None], tensor_ids)
    calls = []

    @jax.jit
    def score(x):
        return -jnp.square(x - goal)           # per-coordinate scores; the fitness is their mean

    def counted(x):
        calls.append(1)
        return score(x)
    return seeds, tensor_ids, counted, calls, np.asarray(target)


def test_cma_es_finds_the_per_layer_coefficients_within_budget():
    seeds, groups, score, calls, target = quadratic_task()
    result = layer_cma.cma_es_layer_slerp(seeds, groups, score, budget=600, seed=1, population=10, sigma=0.2)
    assert result.evaluated == 600 and len(calls) == 600 + 1 - 1   # exactly the budget (the final merge is not scored)
    assert result.coefficients.shape == (4, 1)
    np.testing.assert_allclose(result.coefficients[:, 0], target, atol=0.05)
    start = float(jnp.mean(score(layer_cma.layer_slerp(seeds, np.full((4, 1), 0.5), groups))))
    assert result.best_score > start
    steps = [e for e, _ in result.curve]
    assert steps[-1] == 600 and all(b >= a for (_, a), (_, b) in zip(result.curve, result.curve[1:]))


def test_cma_es_is_deterministic_per_seed_and_counts_a_partial_generation():
    seeds, groups, score, calls, _ = quadratic_task(1)
    a = layer_cma.cma_es_layer_slerp(seeds, groups, score, budget=23, seed=5, population=10)
    b = layer_cma.cma_es_layer_slerp(seeds, groups, score, budget=23, seed=5, population=10)
    c = layer_cma.cma_es_layer_slerp(seeds, groups, score, budget=23, seed=6, population=10)
    assert len(calls) == 69 and a.evaluated == 23 and [e for e, _ in a.curve] == [10, 20, 23]
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    assert not np.array_equal(a.coefficients, c.coefficients)
    np.testing.assert_allclose(a.vector, layer_cma.layer_slerp(seeds, a.coefficients, groups), rtol=1e-5, atol=1e-6)


def test_three_seeds_chain_slerp():
    rng = np.random.default_rng(2)
    seeds = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    groups = cm.ids_from_sizes([5, 3])
    w = np.array([[0.3, 0.6], [0.9, 0.1]])
    first = layer_cma.layer_slerp(seeds[:2], w[:, :1], groups)
    want = layer_cma.layer_slerp(jnp.stack([first, seeds[2]]), w[:, 1:], groups)
    np.testing.assert_allclose(layer_cma.layer_slerp(seeds, w, groups), want, rtol=1e-6)
    result = layer_cma.cma_es_layer_slerp(seeds, groups, lambda x: -jnp.sum(x ** 2), budget=4, seed=0, population=4)
    assert result.coefficients.shape == (2, 2)


def plain_cma_loop(merge, score, start, budget, seed, population, sigma):
    """The reference: evosax CMA-ES as a plain Python loop (key PRNGKey(seed), also the init key; split
    in three per generation; a partial last generation scored, not told), best seen kept in float64."""
    from evosax.algorithms import CMA_ES

    es = CMA_ES(population_size=population, solution=jnp.zeros(start.shape, jnp.float32))
    params = es.default_params.replace(std_init=sigma)
    key = jax.random.PRNGKey(seed)
    state = es.init(key, jnp.asarray(start, jnp.float32), params)
    best, best_w, evaluated, curve = -np.inf, None, 0, []
    while evaluated < budget:
        key, k_ask, k_tell = jax.random.split(key, 3)
        members, state = jax.jit(es.ask)(k_ask, state, params)
        take = min(population, budget - evaluated)
        fitness = np.array([float(jnp.mean(score(merge(w)))) for w in members[:take]])
        evaluated += take
        if fitness.max() > best:
            best, best_w = float(fitness.max()), np.asarray(members[int(fitness.argmax())])
        curve.append((evaluated, best))
        if take == population:
            state, _ = jax.jit(es.tell)(k_tell, members, -jnp.asarray(fitness, jnp.float32), state, params)
    return best_w, best, curve


@pytest.mark.parametrize("budget", [40, 23])
def test_cma_es_search_through_run_search_gives_the_plain_loop_result(budget):
    seeds, groups, score, _, _ = quadratic_task(2)
    start = jnp.full((4, 1), 0.5)
    merge = lambda w: layer_cma.layer_slerp(seeds, w, groups)
    result = layer_cma.cma_es_search(merge, score, start, budget, 3, population=10, sigma=0.3)
    best_w, best, curve = plain_cma_loop(merge, score, start, budget, 3, 10, 0.3)
    np.testing.assert_array_equal(result.coefficients, best_w)
    assert result.best_score == best and result.curve == curve and result.evaluated == budget
