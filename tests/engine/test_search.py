"""One search interface: run_search drives dense M2N2, an evosax strategy and the SLERP sweep the
same way, compiled (a jittable scorer) or in a host loop (a Python scorer), and gives what a
plain Python loop of the strategy's ask / tell gives."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evosax.algorithms import Sep_CMA_ES

from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.algorithm.strategy import M2N2
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.engine.search import ENGINE, Scorer, run_search
from m2n2_jax.methods.brute_force import SlerpSweep, search
from m2n2_jax.methods.evosax_es import EvosaxSearch

D = 6
TARGET = jnp.linspace(-1.0, 1.0, D)


def score(x):
    """Per-coordinate scores (N = D datapoints), higher is better, in (0, 1]."""
    return 1.0 / (1.0 + (x - TARGET) ** 2)


def metrics(x):
    return {"distance": jnp.sqrt(jnp.sum((x - TARGET) ** 2))}


JIT = Scorer(score, metrics)
# The same scorer called from Python with numpy arrays (as a memoised language-model fitness would be).
HOST = Scorer(lambda x: np.asarray(jax.jit(score)(x)), lambda x: {k: float(v) for k, v in jax.jit(metrics)(x).items()},
              jittable=False)
SEEDS_MODELS = np.stack([np.zeros(D, np.float32), np.full(D, 0.5, np.float32), np.linspace(1, -1, D, dtype=np.float32)])


def plain_loop(strategy, params, seed: int, seed_models, steps: int):
    """The reference: one run as a Python loop of init / ask / score / tell with run_search's key chain."""
    key, k_init = jax.random.split(jax.random.PRNGKey(seed))
    models = jnp.asarray(seed_models)
    state = strategy.init(k_init, models, jax.vmap(score)(models), params)
    for _ in range(steps):
        key, k_ask, k_tell = jax.random.split(key, 3)
        population, state = strategy.ask(k_ask, state, params)
        state, _ = strategy.tell(k_tell, population, jax.vmap(score)(population), state, params)
    return strategy.best(state)


def m2n2():
    strategy = M2N2(M2N2Config(archive_size=6, children_per_step=2, mutation_std=0.05),
                    layout=None, example_model=jnp.zeros(D))
    return strategy, strategy.default_params, 2


def sep_cma_es():
    es = Sep_CMA_ES(population_size=4, solution=jnp.zeros(D))
    return EvosaxSearch(es), es.default_params, 4


@pytest.mark.parametrize("make", [m2n2, sep_cma_es], ids=["dense-m2n2", "sep-cma-es"])
def test_run_search_gives_the_plain_loop_result_compiled_and_in_a_host_loop(make):
    strategy, params, population = make()
    seeds, steps = [3, 4], 10
    plan = plan_budget(steps * population, population, 4 * population)
    compiled = run_search(strategy, params, JIT, seeds, SEEDS_MODELS, plan)
    host = run_search(strategy, params, HOST, seeds, SEEDS_MODELS, plan)
    for r, seed in enumerate(seeds):
        model, best_score = plain_loop(strategy, params, seed, SEEDS_MODELS, steps)
        np.testing.assert_allclose(compiled.best[r], model, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(host.best[r], model, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled.metrics["best_train_score"][r, -1], best_score, rtol=1e-5)
    assert compiled.forward_passes == host.forward_passes == plan.log_points
    for name in ("best_train_score", "distance"):
        assert compiled.metrics[name].shape == (len(seeds), plan.num_logs + 1)
        np.testing.assert_allclose(host.metrics[name], compiled.metrics[name], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(compiled.metrics["best_train_score"], axis=1) >= 0)  # the best so far never drops


def test_slerp_sweep_finds_the_brute_force_ratio():
    count, per_step = 48, 8
    a, b = SEEDS_MODELS[0], SEEDS_MODELS[2]
    ratios, accuracy, best = search(types.SimpleNamespace(score_vector=score), a, b, count)
    sweep = SlerpSweep(count, per_step)
    for scorer in (JIT, HOST):
        res = run_search(sweep, None, scorer, [0], np.stack([a, b]), plan_budget(count, per_step, per_step))
        assert float(res.runs.state.best_t[0]) == float(ratios[best])
        assert res.metrics["best_train_score"][0, -1] == pytest.approx(float(accuracy[best]), rel=1e-6)


def test_a_resumed_host_loop_run_equals_an_uninterrupted_one(tmp_path):
    strategy, params, population = m2n2()
    plan = plan_budget(8 * population, population, 2 * population)
    whole = run_search(strategy, params, HOST, [5], SEEDS_MODELS, plan)
    identity = {"test": "resume"}
    saving = RunOptions.saving(str(tmp_path), every=4 * population)
    half = plan_budget(4 * population, population, 2 * population)
    run_search(strategy, params, HOST, [5], SEEDS_MODELS, half, options=saving, identity=identity)
    resumed = run_search(strategy, params, HOST, [5], SEEDS_MODELS, plan, identity=identity,
                         options=RunOptions.saving(str(tmp_path), every=4 * population, resume=True))
    np.testing.assert_array_equal(resumed.best, whole.best)
    np.testing.assert_array_equal(resumed.metrics["best_train_score"], whole.metrics["best_train_score"])


def recipe_problem(warmup=0):
    """Three seeds, continuous scores of a recipe (materialised), and the recipe strategy over them."""
    from m2n2_jax.algorithm import recipes

    rng = np.random.default_rng(7)
    seeds = rng.normal(size=(3, 40)).astype(np.float32)
    directions = rng.normal(size=(9, 40)).astype(np.float32)
    bank = recipes.SeedBank.build(seeds, block=16)
    dense_score = jax.jit(lambda x: jax.nn.sigmoid(directions @ x))
    config = M2N2Config(archive_size=5, mutation_std=0.0, children_per_step=1 if warmup else 2)
    strategy = recipes.RecipeM2N2(config, bank, warmup=warmup)
    scorer = Scorer(lambda recipe: np.asarray(dense_score(bank.materialise(recipe))),
                    lambda recipe: {"norm": float(np.linalg.norm(bank.materialise(recipe)))}, jittable=False)
    return recipes, strategy, scorer


@pytest.mark.parametrize("warmup", [0, 3])
def test_the_recipe_archive_through_run_search_gives_a_plain_recipe_loop_result(warmup):
    """run_search drives the recipe archive (a host strategy) as a plain loop of recipes.ask / tell
    with the engine's key chain (PRNGKey(seed) split into (next, sub) every step) does."""
    recipes, strategy, scorer = recipe_problem(warmup)
    config, bank = strategy.config, strategy.bank
    steps, seeds = 9, [4, 11]
    population = config.children_per_step
    got = run_search(strategy, None, scorer, seeds, strategy.seeds(), plan_budget(steps * population, population, 3 * population),
                     keys=ENGINE)
    seed_scores = np.stack([scorer.score(r) for r in strategy.seeds()])
    for r, seed in enumerate(seeds):
        archive, key = recipes.init(config, bank, seed_scores), jax.random.PRNGKey(seed)
        for _ in range(steps):
            key, sub = jax.random.split(key)
            if archive.evaluated < warmup:
                children = [recipes.random_slerp(config, sub, bank)]
            else:
                children = recipes.ask(config, sub, bank, archive)
            archive = recipes.tell(config, archive, children, np.stack([scorer.score(c) for c in children]))
        state = got.runs.state[r]
        np.testing.assert_array_equal(np.asarray(state.scores), np.asarray(archive.scores))
        assert state.inserted == archive.inserted and state.evaluated == archive.evaluated == steps * population
        for a, b in zip(state.recipes, archive.recipes):
            np.testing.assert_array_equal(a.bounds, b.bounds)
            np.testing.assert_array_equal(a.coeffs, b.coeffs)
        best = archive.recipes[archive.best_index]
        np.testing.assert_array_equal(got.best[r].coeffs, best.coeffs)
        assert got.metrics["best_train_score"][r, -1] == np.float32(np.mean(archive.scores[archive.best_index]))
        assert got.metrics["inserted"][r, -1] == archive.inserted
        assert got.metrics["norm"][r, -1] == np.float32(np.linalg.norm(bank.materialise(best)))
    assert got.forward_passes == [0, 3 * population, 6 * population, 9 * population]


def test_a_resumed_recipe_run_equals_an_uninterrupted_one(tmp_path):
    from m2n2_jax.engine.recipe_runs import SAVED

    _, strategy, scorer = recipe_problem()
    plan = plan_budget(16, 2, 4)
    whole = run_search(strategy, None, scorer, [5], strategy.seeds(), plan, keys=ENGINE)
    identity = {"test": "resume"}
    run_search(strategy, None, scorer, [5], strategy.seeds(), plan_budget(8, 2, 4), keys=ENGINE, saved=SAVED,
               options=RunOptions.saving(str(tmp_path), every=4), identity=identity)
    resumed = run_search(strategy, None, scorer, [5], strategy.seeds(), plan, keys=ENGINE, saved=SAVED, identity=identity,
                         options=RunOptions.saving(str(tmp_path), every=4, resume=True))
    np.testing.assert_array_equal(resumed.best[0].coeffs, whole.best[0].coeffs)
    for name in ("best_train_score", "inserted", "norm"):
        np.testing.assert_array_equal(resumed.metrics[name], whole.metrics[name])


def test_recipe_map_elites_keeps_the_best_child_of_every_cell_and_runs_as_a_plain_loop():
    from m2n2_jax.methods.recipe_map_elites import RecipeMapElites

    _, recipe_m2n2, scorer = recipe_problem()
    bank = recipe_m2n2.bank
    seen = []  # every scored model: (cell, quality, recipe)
    descriptor = lambda s: (int(min(np.mean(s[:4]) * 3, 2)), int(min(np.mean(s[4:]) * 3, 2)))

    def recording(recipe):
        scores = scorer.score(recipe)
        seen.append((descriptor(scores), float(np.mean(scores)), recipe))
        return scores

    strategy = RecipeMapElites(bank, descriptor, warmup=3)
    got = run_search(strategy, None, Scorer(recording, jittable=False), [8], strategy.seeds(), plan_budget(20, 1, 5),
                     keys=ENGINE)
    grid = got.runs.state[0]
    assert grid.evaluated == 20 and len(seen) == 3 + 20  # the seeds, then one child per step
    for cell, (recipe, quality, _) in grid.cells.items():
        first_best = max((q for c, q, _ in seen if c == cell))
        assert quality == first_best and any(r is recipe for c, q, r in seen if c == cell and q == quality)
    assert set(grid.cells) == {c for c, _, _ in seen}
    assert got.metrics["best_train_score"][0, -1] == np.float32(max(q for _, q, _ in seen))
    assert got.metrics["occupied_cells"][0, -1] == len(grid.cells)
    # the same run as a plain loop of the strategy (the engine's key chain), the seeds scored first
    plain = strategy.init(None, strategy.seeds(), [scorer.score(r) for r in strategy.seeds()])
    key = jax.random.PRNGKey(8)
    for _ in range(20):
        key, sub = jax.random.split(key)
        children, plain = strategy.ask(sub, plain)
        plain, _ = strategy.tell(sub, children, np.stack([scorer.score(c) for c in children]), plain)
    assert plain.inserted == grid.inserted and sorted(plain.cells) == sorted(grid.cells)
    for cell in grid.cells:
        np.testing.assert_array_equal(plain.cells[cell][0].coeffs, grid.cells[cell][0].coeffs)
