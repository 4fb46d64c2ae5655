"""Wiring of the baselines at tiny budgets: improvement, sign convention, grid edge,
brute-force search against a numpy loop, lazy CMA-ES against evosax's CMA_ES."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import CMA_ES

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.methods import brute_force
from m2n2_jax.methods import map_elites
from m2n2_jax.methods.evosax_es import LazyCMA_ES, run_es
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.tasks.base import Task
from m2n2_jax.tasks.digits import load_digits_split
from m2n2_jax.tasks.classification import MLP, classification_task

DIM = 40


def positive_task(dim: int = DIM) -> Task:
    """Score of datapoint j = 1 if coordinate j is positive: maximising pushes coordinates up."""
    layout = VectorLayout.of(jnp.zeros((dim,), jnp.float32))

    def score_vector(x):
        return (x > 0).astype(jnp.float32)

    return Task(name="positive", layout=layout, num_datapoints=dim, score_vector=score_vector,
                metrics=lambda x: {"test_accuracy": jnp.mean(x > 0)},
                random_seed=lambda k: jax.random.normal(k, (dim,)) * 0.01,
                train_labels=jnp.arange(dim) % 10)


@pytest.fixture(scope="module")
def small_digits():
    train, test = load_digits_split()
    return classification_task("digits-small", MLP(hidden=8), train, test)


@pytest.mark.parametrize("method", ["sep-cma-es", "lm-ma-es", "open-es", "simple-ga"])
def test_es_maximises_training_accuracy(method):
    task = positive_task()
    res = run_es(method, task, [3, 4], 600, log_every=200)
    score = res.metrics["best_train_score"]
    # evosax minimises: had the sign been left as is, the best model would lose positive coordinates
    assert np.all(score[:, -1] >= score[:, 0] + 0.2), (method, score)
    assert np.all(np.diff(score, axis=1) >= 0)  # best so far never gets worse
    recomputed = np.mean(np.asarray(res.best) > 0, axis=1)
    np.testing.assert_allclose(score[:, -1], recomputed, atol=1e-6)
    np.testing.assert_allclose(res.metrics["test_accuracy"][:, -1], recomputed, atol=1e-6)
    assert res.forward_passes == [0, 200, 400, 600]


def test_full_cma_es_interrupted_in_its_second_run_resumes_to_the_same_result(tmp_path):
    from m2n2_jax.engine.chunk_loop import Interrupted, RunOptions
    from m2n2_jax.errors import ConfigError

    task, kw = positive_task(), dict(log_every=100, eigen_every=4)
    full = run_es("cma-es", task, [5, 6], 400, **kw)
    calls = []

    def stop_in_second_run(done, total, last):
        calls.append(done)
        if len(calls) == 6:  # run 1: 100..400, run 2: 100, 200
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="at 600 forward passes"):
        run_es("cma-es", task, [5, 6], 400, options=RunOptions.saving(str(tmp_path), every=100,
                                                                      progress=stop_in_second_run), **kw)
    seen = []
    resumed = run_es("cma-es", task, [5, 6], 400, options=RunOptions.saving(
        str(tmp_path), every=100, resume=True, progress=lambda done, total, last: seen.append(done)), **kw)
    assert seen == [300, 400]  # only the rest of the second run was computed
    assert resumed.forward_passes == full.forward_passes
    for name in full.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], full.metrics[name])
    np.testing.assert_array_equal(resumed.best, full.best)
    with pytest.raises(ConfigError, match=r"seeds \(checkpoint \[5, 6\], now \[5, 7\]\)"):
        run_es("cma-es", task, [5, 7], 400, options=RunOptions.saving(str(tmp_path), every=100, resume=True), **kw)


def test_full_cma_es_improves_and_decomposes_lazily():
    task = positive_task()
    res = run_es("cma-es", task, [5], 400, log_every=200, eigen_every=4)
    score = res.metrics["best_train_score"]
    assert score[0, -1] >= score[0, 0] + 0.2, score
    assert res.config["eigen_every"] == 4
    es = LazyCMA_ES(20, jnp.zeros(DIM), eigen_every=3)
    params = es.default_params.replace(std_init=jnp.asarray(0.1))
    state = es.init(jax.random.PRNGKey(0), jnp.zeros(DIM), params)
    key = jax.random.PRNGKey(1)
    for gen in range(1, 7):
        key, k1, k2 = jax.random.split(key, 3)
        pop, state = es.ask(k1, state, params)
        state, _ = es.tell(k2, pop, -jnp.mean(pop > 0, axis=1), state, params)
        stale = np.allclose(np.asarray(state.B), np.eye(DIM))
        # the first decomposition happens when asking at generation 3 (counter 3 before that tell)
        assert stale == (gen <= 3), gen


def test_lazy_gap_at_paper_size_and_equivalence_with_evosax():
    assert 100 <= LazyCMA_ES(20, jnp.zeros(19210)).lazy_gap() <= 300  # about 190 generations
    lazy, full = LazyCMA_ES(20, jnp.zeros(DIM), eigen_every=1), CMA_ES(20, jnp.zeros(DIM))
    params = full.default_params.replace(std_init=jnp.asarray(0.1))
    s_lazy = lazy.init(jax.random.PRNGKey(0), jnp.zeros(DIM), params)
    s_full = full.init(jax.random.PRNGKey(0), jnp.zeros(DIM), params)
    key = jax.random.PRNGKey(2)
    for _ in range(4):
        key, k1, k2 = jax.random.split(key, 3)
        p_lazy, s_lazy = lazy.ask(k1, s_lazy, params)
        p_full, s_full = full.ask(k1, s_full, params)
        np.testing.assert_allclose(p_lazy, p_full, atol=2e-5)
        fit = -jnp.mean(p_full > 0, axis=1) + 1e-3 * jnp.arange(20)  # distinct ranks
        s_lazy, _ = lazy.tell(k2, p_full, fit, s_lazy, params)
        s_full, _ = full.tell(k2, p_full, fit, s_full, params)
    np.testing.assert_allclose(s_lazy.mean, s_full.mean, atol=1e-5)


def test_es_rejects_bad_settings():
    with pytest.raises(ConfigError, match="multiple of the population"):
        run_es("sep-cma-es", positive_task(), [0], 30)
    with pytest.raises(ConfigError, match="sigma"):
        run_es("sep-cma-es", positive_task(), [0], 40, sigma=0.0)


def test_grid_edges_and_descriptor():
    bins = np.asarray(map_elites.bin_index(jnp.asarray([0.0, 0.0999, 0.1, 0.55, 0.9999, 1.0])))
    assert bins.tolist() == [0, 0, 1, 5, 9, 9]  # exactly 1.0 stays on the grid
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    scores = (rng.random(200) < 0.6).astype(np.float32)
    desc = np.asarray(map_elites.descriptor(jnp.asarray(scores), jnp.asarray(labels)))
    np.testing.assert_allclose(desc, [scores[labels % 2 == 1].mean(), scores[labels % 2 == 0].mean()], rtol=1e-6)
    perfect = map_elites.cell_index(map_elites.descriptor(jnp.ones(200), jnp.asarray(labels)))
    assert int(perfect) == 99


def test_grid_insertion_keeps_the_better_elite():
    labels = jnp.arange(10)
    state = map_elites.empty_grid(3, jax.random.PRNGKey(0))
    odd_only = jnp.asarray([0, 1] * 5, jnp.float32)  # odd acc 1.0, even acc 0.0 -> cell (9, 0)
    state = map_elites.insert(state, jnp.ones(3), odd_only, labels)
    assert bool(state.occupied[90]) and float(state.quality[90]) == 0.5 and int(state.occupied.sum()) == 1
    worse = odd_only.at[9].set(0.0)  # odd acc 0.8 -> cell (8, 0), a different cell
    state = map_elites.insert(state, 2 * jnp.ones(3), worse, labels)
    assert int(state.occupied.sum()) == 2 and bool(state.occupied[80])
    same_cell_worse = odd_only.at[1].set(0.0).at[9].set(0.0).at[3].set(0.0)  # odd 0.4 -> cell (4, 0)
    state = map_elites.insert(state, 3 * jnp.ones(3), same_cell_worse, labels)
    tie = odd_only  # same cell (9, 0), equal quality: not better, the elite stays
    state = map_elites.insert(state, 4 * jnp.ones(3), tie, labels)
    np.testing.assert_array_equal(state.params[90], jnp.ones(3))
    better = odd_only.at[0].set(1.0)  # odd 1.0, even 0.2 -> cell (9, 2)
    state = map_elites.insert(state, 5 * jnp.ones(3), better, labels)
    assert bool(state.occupied[92]) and int(state.inserted) == 4


def test_map_elites_improves_from_scratch():
    res = map_elites.run_map_elites(positive_task(), [1, 2], 300, log_every=100)
    score = res.metrics["best_train_score"]
    assert np.all(score[:, -1] >= score[:, 0] + 0.1), score
    assert np.all(res.metrics["occupied_cells"][:, -1] > res.metrics["occupied_cells"][:, 0])
    np.testing.assert_allclose(score[:, -1], np.mean(np.asarray(res.best) > 0, axis=1), atol=1e-6)


def _numpy_accuracy(task_params, x, y):
    (k0, b0, k1, b1) = task_params
    h = np.maximum(x @ k0 + b0, 0)
    return np.mean(np.argmax(h @ k1 + b1, axis=1) == y)


def test_brute_force_picks_the_best_ratio_like_a_numpy_loop(small_digits):
    (x, y), _ = load_digits_split()
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    a = np.asarray(jax.random.normal(keys[0], (small_digits.num_params,)) * 0.3)
    b = np.asarray(jax.random.normal(keys[1], (small_digits.num_params,)) * 0.3)
    count = 41
    ratios, acc, best = brute_force.search(small_digits, a, b, count)
    omega = math.acos(np.clip(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)), -1, 1))
    expected = []
    for t in np.linspace(0, 1, count):
        v = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
        leaves = small_digits.layout.unravel(jnp.asarray(v, jnp.float32))
        d0, d1 = leaves["params"]["Dense_0"], leaves["params"]["Dense_1"]
        expected.append(_numpy_accuracy([np.asarray(d0["kernel"]), np.asarray(d0["bias"]), np.asarray(d1["kernel"]),
                                         np.asarray(d1["bias"])], x, y))
    np.testing.assert_allclose(np.asarray(acc), expected, atol=1.5 / len(y))
    assert int(best) == int(np.argmax(np.asarray(acc))) and abs(expected[int(best)] - max(expected)) <= 1.5 / len(y)
    res = brute_force.run_brute_force(small_digits, [0, 1], count, seed_models=np.stack([a, b]))
    assert res.extra["best_ratio"] == pytest.approx(float(ratios[best]))
    merged = xo.slerp(jnp.asarray(a), jnp.asarray(b), float(ratios[best]))
    assert res.metrics["test_accuracy"][0, -1] == pytest.approx(float(small_digits.metrics(merged)["test_accuracy"]))
    with pytest.raises(ConfigError, match="pre-trained"):
        brute_force.run_brute_force(small_digits, [0], count)


def test_brute_force_reports_the_tasks_own_metrics():
    """A task without test_accuracy (a custom task, llm-exact-match's test_exact_match) gets its own metrics."""
    from m2n2_jax.tasks import custom_task

    task = custom_task("exact", {"w": jnp.zeros(8)}, lambda p: (p["w"] > 0).astype(jnp.float32),
                       lambda p: {"test_exact_match": jnp.mean(p["w"] > 0.5), "norm": jnp.linalg.norm(p["w"])})
    a, b = np.linspace(-1.0, 1.0, 8), np.linspace(1.0, -0.5, 8)
    res = brute_force.run_brute_force(task, [0, 1], 101, seed_models=np.stack([a, b]))
    assert set(res.metrics) == {"test_exact_match", "norm", "best_train_score"}
    for run in res.best:  # every run reports the same model: its metrics, recomputed with numpy
        assert res.metrics["test_exact_match"][0, -1] == pytest.approx(np.mean(run > 0.5))
        assert res.metrics["norm"][0, -1] == pytest.approx(np.linalg.norm(run), rel=1e-5)
        assert res.metrics["best_train_score"][0, -1] == pytest.approx(np.mean(run > 0))
    assert task.headline_metric == "test_exact_match"


def test_full_cma_es_runs_with_single_threaded_blas():
    import scipy.linalg  # noqa: F401  (loads the OpenBLAS that jax's CPU eigh calls into)
    from threadpoolctl import threadpool_info

    from m2n2_jax.methods.evosax_es import single_thread_blas

    with single_thread_blas():
        pools = [p for p in threadpool_info() if p["user_api"] in ("blas", "openmp")]
        assert pools and all(p["num_threads"] == 1 for p in pools), pools
