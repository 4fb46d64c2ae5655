"""The engine: determinism, batching semantics, API, pytrees and validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2, M2N2Config, VectorLayout
from m2n2_jax.engine import runner
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.errors import ConfigError, ScoreFunctionError, SeedModelError


def run_chunk(config, task, seeds, steps, eval_batch=1, steps_per_log=None):
    steps_per_log = steps_per_log or steps
    state = runner.init_runs(config, task, seeds)
    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch)
    return chunk(state, steps // steps_per_log)


def test_same_seed_same_result_and_other_seed_differs(digits):
    config = M2N2Config(children_per_step=2)
    a, ma = run_chunk(config, digits, [5], 60)
    b, mb = run_chunk(config, digits, [5], 60)
    c, _ = run_chunk(config, digits, [6], 60)
    np.testing.assert_array_equal(a.archive.params, b.archive.params)
    np.testing.assert_array_equal(ma["test_accuracy"], mb["test_accuracy"])
    assert not np.array_equal(a.archive.params, c.archive.params)


@pytest.mark.parametrize("key_order", ["engine", "reference"])
def test_b1_scan_equals_step_by_step_ask_tell(digits, key_order):
    config = M2N2Config(key_order=key_order)
    steps = 40
    scanned, _ = run_chunk(config, digits, [11], steps)

    state = runner.init_runs(config, digits, [11])
    archive = jax.tree.map(lambda x: x[0], state.archive)
    key = state.key[0]
    score = jax.jit(digits.score_vector)
    strat, params = M2N2(config, layout=digits.layout), config.params()
    for _ in range(steps):
        key, sub = jax.random.split(key)
        children, archive = strat.ask(sub, archive, params)
        scores = jnp.stack([score(c) for c in children])
        archive, _ = strat.tell(sub, children, scores, archive, params)
    np.testing.assert_array_equal(scanned.archive.params[0], archive.params)
    np.testing.assert_array_equal(scanned.archive.scores[0], archive.scores)
    assert int(archive.evaluated) == steps


def test_batched_children_are_drawn_from_one_snapshot_and_inserted_in_order(digits):
    config = M2N2Config(children_per_step=4)
    state = runner.init_runs(config, digits, [2])
    archive = jax.tree.map(lambda x: x[0], state.archive)
    key = jax.random.PRNGKey(3)
    strat, params = M2N2(config, layout=digits.layout), config.params()
    children, _ = strat.ask(key, archive, params)
    assert children.shape == (4, digits.num_params)
    scores = jax.vmap(digits.score_vector)(children)
    together, metrics = strat.tell(key, children, scores, archive, params)
    one_by_one = archive
    for c, s in zip(children, scores):
        one_by_one, _ = strat.tell(key, c[None], s[None], one_by_one, params)
    np.testing.assert_array_equal(together.params, one_by_one.params)
    assert int(np.sum(metrics["inserted"])) == int(together.inserted - archive.inserted)
    assert int(together.evaluated) == 4


@pytest.mark.parametrize("batch,eval_batch", [(1, 1), (2, 2)])
def test_runs_batched_together_equal_runs_one_by_one(digits, batch, eval_batch):
    config = M2N2Config(children_per_step=batch)
    seeds = [21, 22, 23]
    together, logged = run_chunk(config, digits, seeds, 30, eval_batch, steps_per_log=10)
    for r, seed in enumerate(seeds):
        alone, alone_logged = run_chunk(config, digits, [seed], 30, eval_batch, steps_per_log=10)
        np.testing.assert_array_equal(together.archive.params[r], alone.archive.params[0])
        np.testing.assert_array_equal(logged["test_accuracy"][:, r], alone_logged["test_accuracy"][:, 0])


def test_pytree_round_trip_and_layout_order():
    params = {"b": {"w": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}, "a": jnp.array([7.0, 8.0])}
    layout = VectorLayout.of(params)
    vec = layout.ravel(params)
    assert vec.shape == (11,) and layout.size == 11
    back = layout.unravel(vec)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    ordered = VectorLayout.of(params, order=(2, 1, 0))  # leaves: a, b/bias, b/w
    np.testing.assert_array_equal(ordered.ravel(params)[:6], np.arange(6.0))
    jax.tree.map(np.testing.assert_array_equal, ordered.unravel(ordered.ravel(params)), params)


def test_seed_model_validation():
    base = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    strat = M2N2(M2N2Config(), base)
    scores = jnp.zeros((2, 4))
    key, params = jax.random.PRNGKey(0), strat.default_params
    with pytest.raises(SeedModelError, match="at least two seed models"):
        strat.init(key, [base], scores[:1], params)
    with pytest.raises(SeedModelError, match="tree structure"):
        strat.init(key, [base, {"w": jnp.zeros((2, 3))}], scores, params)
    with pytest.raises(SeedModelError, match="shape"):
        strat.init(key, [base, {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}], scores, params)
    with pytest.raises(SeedModelError, match="dtype"):
        strat.init(key, [base, {"w": jnp.zeros((2, 3), jnp.bfloat16), "b": jnp.zeros(3)}], scores, params)
    with pytest.raises(SeedModelError, match=r"seed vectors have shape \(2, 5\), expected \(K >= 2, 9\)"):
        strat.init(key, jnp.zeros((2, 5)), scores, params)


def test_score_validation_and_config_validation():
    base = {"w": jnp.zeros(3)}
    strat = M2N2(M2N2Config(), base)
    key, params = jax.random.PRNGKey(0), strat.default_params
    with pytest.raises(ScoreFunctionError, match="shape"):
        strat.init(key, [base, base], jnp.zeros((2,)), params)
    state = strat.init(key, [base, {"w": jnp.ones(3)}], jnp.zeros((2, 5)), params)
    with pytest.raises(ScoreFunctionError, match="shape"):
        strat.tell(key, jnp.zeros((1, 3)), jnp.zeros((1, 4)), state, params)
    with pytest.raises(ScoreFunctionError, match="dtype"):
        strat.tell(key, jnp.zeros((1, 3)), jnp.zeros((1, 5), jnp.complex64), state, params)
    with pytest.raises(ConfigError, match="example model"):
        M2N2(M2N2Config())
    with pytest.raises(ConfigError, match="archive_size"):
        M2N2Config(archive_size=1)
    with pytest.raises(ConfigError, match="children_per_step=1"):
        M2N2Config(key_order="reference", children_per_step=2)
    with pytest.raises(ConfigError, match="multiple of the batch"):
        plan_budget(1001, 4, None)


def test_api_with_user_pytree_model_solves_a_toy_task():
    """Bring your own model and score: match 8 targets with a 2-leaf pytree."""
    targets = jnp.linspace(-1, 1, 8)

    def score(params):  # per-datapoint score in [0, 1]
        pred = params["w"] * jnp.arange(8) / 8 + params["b"]
        return jnp.exp(-((pred - targets) ** 2) * 20)

    example = {"w": jnp.zeros(8), "b": jnp.zeros(())}
    strat = M2N2(M2N2Config(children_per_step=8, mutation_std=0.05), example)
    k1, k2, key = jax.random.split(jax.random.PRNGKey(0), 3)
    seeds = [jax.tree.map(lambda x: 0.1 * jax.random.normal(k, x.shape), example) for k in (k1, k2)]
    params = strat.default_params
    key, k_init = jax.random.split(key)
    state = strat.init(k_init, seeds, jnp.stack([score(s) for s in seeds]), params)
    start = float(jnp.max(jnp.mean(state.scores, axis=1)))
    batch_score = jax.jit(jax.vmap(lambda v: score(strat.unravel(v))))
    for _ in range(300):  # 2,400 children; 150 steps left some seeds short of the bar
        key, k_ask, k_tell = jax.random.split(key, 3)
        children, state = strat.ask(k_ask, state, params)
        state, _ = strat.tell(k_tell, children, batch_score(children), state, params)
    best = strat.best_model(state)
    assert jax.tree.structure(best) == jax.tree.structure(example)
    assert float(jnp.mean(score(best))) > start + 0.3
    assert int(state.evaluated) == 300 * 8
