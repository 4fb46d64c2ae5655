"""The public M2N2 API: evosax's signatures, the reference key order, params sweeps, capacity."""
from conftest import ROOT_DIR as ROOT
import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2, M2N2Config, M2N2Params
from m2n2_jax.errors import ConfigError

DATA = os.path.join(ROOT, "tests", "data")


def test_public_api_in_reference_order_reproduces_authors_seed42_curve(digits):
    """A plain evosax loop over M2N2's ask / tell, nothing from the engine, gives the
    authors' seed-42 test accuracy after each of the first 2,000 children."""
    with open(os.path.join(DATA, "reference_seed42_curve.json")) as f:
        expected = np.asarray(json.load(f)["test_accuracy_first_10000"])[:2000]
    strat = M2N2(M2N2Config(key_order="reference"), layout=digits.layout)
    params = strat.default_params
    # the authors' start: PRNGKey(42) split into (key, k_a, k_b), seeds N(0, 0.01^2) from k_a, k_b
    key, k_a, k_b = jax.random.split(jax.random.PRNGKey(42), 3)
    seeds = jnp.stack([digits.random_seed(k_a), digits.random_seed(k_b)])
    state = strat.init(key, seeds, jax.vmap(digits.score_vector)(seeds), params)

    @jax.jit
    def step(key, state):
        key, k_ask, k_tell = jax.random.split(key, 3)  # reference order ignores them: the state holds its key
        population, state = strat.ask(k_ask, state, params)
        state, _ = strat.tell(k_tell, population, jax.vmap(digits.score_vector)(population), state, params)
        return key, state, digits.metrics(state.params[state.best_index])["test_accuracy"]

    curve = []
    for _ in range(len(expected)):
        key, state, accuracy = step(key, state)
        curve.append(accuracy)
    n_test = digits.info["test_size"]
    ours, theirs = np.round(np.asarray(curve) * n_test), np.round(expected * n_test)
    mismatch = np.nonzero(ours != theirs)[0]
    assert mismatch.size == 0, f"first mismatch at child {mismatch[0]}: {ours[mismatch[0]]} vs {theirs[mismatch[0]]}"
    assert expected[-1] > expected[0] + 0.3  # the curve climbs: not a trivial match


def toy_problem(num_points=12, dim=6):
    """A 2-leaf model and continuous per-datapoint scores in (0, 1]."""
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.normal(size=(num_points, dim)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=num_points), jnp.float32)
    example = {"w": jnp.zeros(dim), "b": jnp.zeros(())}

    def score(model):
        return jnp.exp(-(inputs @ model["w"] + model["b"] - targets) ** 2)

    return example, score


def test_a_sweep_over_alpha_is_one_compiled_call_and_matches_separate_runs():
    example, score = toy_problem()
    strat = M2N2(M2N2Config(children_per_step=4, archive_size=6, mutation_std=0.05), example)
    batch_score = jax.vmap(lambda v: score(strat.unravel(v)))
    seeds = jax.random.normal(jax.random.PRNGKey(1), (2, strat.num_dims)) * 0.1
    traces = []

    def run(params):
        traces.append(1)  # counts compilations of this function
        state = strat.init(jax.random.PRNGKey(0), seeds, batch_score(seeds), params)

        def step(state, key):
            population, state = strat.ask(key, state, params)
            state, metrics = strat.tell(key, population, batch_score(population), state, params)
            return state, metrics["inserted"]

        state, inserted = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(2), 25))
        return state.params, state.scores, inserted

    base = strat.default_params
    alphas = jnp.array([1.0, 0.25], jnp.float32)
    sweep = base.replace(alpha=alphas)
    together = jax.jit(jax.vmap(run, in_axes=(M2N2Params(alpha=0, mutation_std=None, slerp_eps=None),)))(sweep)
    assert len(traces) == 1
    run_one = jax.jit(run)
    alone = [run_one(base.replace(alpha=a)) for a in alphas]
    assert len(traces) == 2  # the second alpha reused the first one's compilation
    for i in range(2):
        np.testing.assert_array_equal(together[2][i], alone[i][2])  # same insertion decisions
        np.testing.assert_allclose(together[1][i], alone[i][1], rtol=1e-6)
        np.testing.assert_allclose(together[0][i], alone[i][0], rtol=1e-5, atol=1e-7)
    assert not np.array_equal(alone[0][2], alone[1][2])  # alpha really changes the run


def numpy_insert(members, scores, child, child_scores, capacity, alpha, adaptive):
    """Plain-Python insertion: the first least-fit of archive + child leaves."""
    extended = np.concatenate([scores, child_scores[None]]).astype(np.float64)
    size, n = scores.shape
    if adaptive:
        capacity = [max(extended[:, j]) if max(extended[:, j]) > 0 else 1.0 for j in range(n)]
    fitness = []
    for i in range(size + 1):
        total = 0.0
        for j in range(n):
            z = sum(extended[:, j])
            total += capacity[j] * extended[i, j] / (1.0 if z == 0 else z) ** alpha
        fitness.append(total)
    worst = fitness.index(min(fitness))
    if worst < size:
        members, scores = members.copy(), scores.copy()
        members[worst], scores[worst] = child, child_scores
    return members, scores


@pytest.mark.parametrize("rule", ["archive-max", "fixed"])
def test_capacity_rule_on_continuous_scores_matches_a_numpy_loop(rule):
    rng = np.random.default_rng(3)
    size, n, dim, steps = 5, 9, 3, 40
    strat = M2N2(M2N2Config(archive_size=size, capacity_rule=rule), np.zeros(dim, np.float32))
    params = strat.default_params
    seeds = rng.normal(size=(2, dim)).astype(np.float32)
    seed_scores = rng.random((2, n)).astype(np.float32) * 0.5
    state = strat.init(jax.random.PRNGKey(0), seeds, seed_scores, params)
    members, scores = np.zeros((size, dim), np.float32), np.zeros((size, n), np.float32)
    for s, sc in zip(seeds, seed_scores):
        members, scores = numpy_insert(members, scores, s, sc, np.ones(n), 1.0, rule == "archive-max")
    for _ in range(steps):
        child = rng.normal(size=(1, dim)).astype(np.float32)
        child_scores = (rng.random((1, n)) * rng.uniform(0.2, 3.0)).astype(np.float32)  # scales differ
        state, _ = strat.tell(jax.random.PRNGKey(0), child, child_scores, state, params)
        members, scores = numpy_insert(members, scores, child[0], child_scores[0], np.ones(n), 1.0,
                                       rule == "archive-max")
        np.testing.assert_array_equal(np.asarray(state.scores), scores)
        np.testing.assert_array_equal(np.asarray(state.params), members)
        want = scores.max(axis=0) if rule == "archive-max" else np.ones(n)
        np.testing.assert_allclose(np.asarray(state.capacity), np.where(want > 0, want, 1.0))


def test_capacity_rule_auto_follows_the_score_type_and_changes_decisions():
    strat = M2N2(M2N2Config(archive_size=2), np.zeros(1, np.float32))
    fixed = M2N2(M2N2Config(archive_size=2, capacity_rule="fixed"), np.zeros(1, np.float32))
    params, key, seeds = strat.default_params, jax.random.PRNGKey(0), np.array([[1.0], [2.0]], np.float32)
    config = strat.config
    assert config.capacity_rule_for(np.bool_) == "fixed" and config.capacity_rule_for(np.float32) == "archive-max"
    assert config.for_capacity(np.ones(3)).capacity_rule == "fixed" and config.for_capacity(None) is config
    with pytest.raises(ConfigError, match="for_capacity"):  # the rule is the config's, never the state's
        strat.init(key, seeds, np.ones((2, 3), np.float32), params, capacity=np.ones(3))
    state = strat.init(key, seeds, np.ones((2, 3)), params)
    assert all(f.metadata.get("pytree_node", True) for f in dataclasses.fields(state))  # arrays only
    # scores on datapoint 0 run to 10, on datapoint 1 to 1. With c_j = the archive's best
    # (10, 1) the child's 6 on point 0 earns 3.75 and beats member 1's 0.83; with c = 1
    # shares are all that count, the child earns 0.54 and member 1 keeps its place
    seed_scores = np.array([[10.0, 0.0], [0.0, 1.0]], np.float32)
    child_scores = np.array([[6.0, 0.2]], np.float32)
    for s, enters in ((strat, True), (fixed, False)):
        state = s.init(key, seeds, seed_scores, params)
        state, metrics = s.tell(key, np.array([[3.0]], np.float32), child_scores, state, params)
        assert bool(metrics["inserted"][0]) == enters
        members, _ = numpy_insert(np.asarray(seeds), seed_scores, np.array([3.0], np.float32), child_scores[0],
                                  np.ones(2), 1.0, s is strat)
        np.testing.assert_array_equal(np.asarray(state.params), members)


def test_readme_example_runs():
    """The README's "bring your own model" snippet, extracted so that it cannot drift."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Python API: bring your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    merged, state = namespace["merged"], namespace["state"]
    assert jax.tree.structure(merged) == jax.tree.structure(namespace["seed_a"])
    assert int(state.evaluated) > 0
    seed_best = max(float(jnp.mean(namespace["score"](s))) for s in (namespace["seed_a"], namespace["seed_b"]))
    assert float(jnp.mean(namespace["score"](merged))) > seed_best  # the merge beats both seeds


def test_params_are_a_pytree_of_the_numeric_settings():
    params = M2N2Config(alpha=0.5, mutation_std=0.0).params()
    assert isinstance(params, M2N2Params)
    assert [float(x) for x in jax.tree.leaves(params)] == [0.5, 0.0, pytest.approx(1e-3)]
    assert float(M2N2Config(key_order="reference").params().slerp_eps) == pytest.approx(1e-6)


def numpy_insert_minus_worst(members, scores, filled, child, child_scores, capacity, alpha, adaptive):
    """Plain-Python insertion with the paper's continuous rule: each datapoint's worst score over
    the members (and the child) subtracted, capacity the best shifted score, empty slots first."""
    size, n = scores.shape
    rows = [list(map(float, r)) for r in scores] + [list(map(float, child_scores))]
    member = list(filled) + [True]
    worst = [min(rows[i][j] for i in range(size + 1) if member[i]) for j in range(n)]
    shifted = [[rows[i][j] - worst[j] if member[i] else 0.0 for j in range(n)] for i in range(size + 1)]
    if adaptive:
        capacity = [max(r[j] for r in shifted) or 1.0 for j in range(n)]
    fitness = []
    for i in range(size + 1):
        z = [sum(r[j] for r in shifted) or 1.0 for j in range(n)]
        fit = sum(capacity[j] * shifted[i][j] / z[j] ** alpha for j in range(n))
        fitness.append(fit if member[i] else -np.inf)
    out = fitness.index(min(fitness))
    members, scores, filled = members.copy(), scores.copy(), filled.copy()
    if out < size:
        members[out], scores[out], filled[out] = child, child_scores, True
    shifted_members = [[scores[i][j] - min(scores[k][j] for k in range(size) if filled[k]) if filled[i] else 0.0
                        for j in range(n)] for i in range(size)]
    if adaptive:
        capacity = [max(r[j] for r in shifted_members) or 1.0 for j in range(n)]
    return members, scores, filled, np.asarray(shifted_members), np.asarray(capacity)


@pytest.mark.parametrize("rule", ["archive-max", "fixed"])
def test_subtract_worst_matches_a_numpy_loop(rule):
    """The engine option for the paper's diffusion protocol, child by child against plain Python;
    the same children without the option take other decisions (the test can fail)."""
    rng = np.random.default_rng(5)
    size, n, dim, steps = 5, 7, 3, 40
    config = M2N2Config(archive_size=size, capacity_rule=rule, subtract_worst=True, mutation_std=0.0)
    strat = M2N2(config, np.zeros(dim, np.float32))
    plain = M2N2(config.replace(subtract_worst=False), np.zeros(dim, np.float32))
    params = strat.default_params
    seeds = rng.normal(size=(2, dim)).astype(np.float32)
    seed_scores = (0.5 + 0.3 * rng.random((2, n))).astype(np.float32)  # well above 0: the shift matters
    state = strat.init(jax.random.PRNGKey(0), seeds, seed_scores, params)
    other = plain.init(jax.random.PRNGKey(0), seeds, seed_scores, params)
    members, scores, filled = np.zeros((size, dim), np.float32), np.zeros((size, n), np.float32), np.zeros(size, bool)
    for s, sc in zip(seeds, seed_scores):
        members, scores, filled, _, _ = numpy_insert_minus_worst(members, scores, filled, s, sc, np.ones(n), 1.0,
                                                                 rule == "archive-max")
    differ = 0
    for _ in range(steps):
        child = rng.normal(size=(1, dim)).astype(np.float32)
        child_scores = (0.4 + 0.5 * rng.random((1, n))).astype(np.float32)
        state, _ = strat.tell(jax.random.PRNGKey(0), child, child_scores, state, params)
        other, _ = plain.tell(jax.random.PRNGKey(0), child, child_scores, other, params)
        members, scores, filled, shifted, capacity = numpy_insert_minus_worst(
            members, scores, filled, child[0], child_scores[0], np.ones(n), 1.0, rule == "archive-max")
        np.testing.assert_array_equal(np.asarray(state.params), members)
        np.testing.assert_array_equal(np.asarray(state.filled), filled)
        np.testing.assert_allclose(np.asarray(state.capacity), capacity, rtol=1e-6)
        from m2n2_jax.algorithm.strategy import _competition

        np.testing.assert_allclose(np.asarray(_competition(config, state)[0]), shifted, rtol=1e-6, atol=1e-7)
        differ += not np.array_equal(np.asarray(other.params), members)
    assert filled.all() and differ > 0


def test_subtract_worst_never_draws_an_empty_slot_as_a_parent():
    """Two identical seeds: every shifted score is 0, so fitness and attraction are all zero;
    the fallback draws among the members, never an empty (all-zero) slot."""
    config = M2N2Config(archive_size=6, subtract_worst=True, mutation_std=0.0, children_per_step=64)
    strat = M2N2(config, np.zeros(4, np.float32))
    params = strat.default_params
    seed = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    state = strat.init(jax.random.PRNGKey(0), np.stack([seed, seed]), np.full((2, 3), 0.7, np.float32), params)
    assert np.asarray(state.filled).tolist() == [True, True] + [False] * 4
    children, _ = strat.ask(jax.random.PRNGKey(1), state, params)
    np.testing.assert_allclose(np.asarray(children), np.broadcast_to(seed, (64, 4)), rtol=1e-6)
    from m2n2_jax.algorithm.recipes import check_config
    from m2n2_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="subtract_worst"):
        M2N2Config(key_order="reference", subtract_worst=True)
    with pytest.raises(ConfigError, match="dense archive only"):
        check_config(M2N2Config(subtract_worst=True, mutation_std=0.0))
