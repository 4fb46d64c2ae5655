"""One search interface, and one run function for every strategy that has it.

A strategy has evosax's shape (:class:`~m2n2_jax.algorithm.strategy.M2N2` has it; so do
:class:`~m2n2_jax.methods.evosax_es.EvosaxSearch` and :class:`~m2n2_jax.methods.brute_force.SlerpSweep`):

- ``init(key, seeds [K, D], seed_scores [K, N], params) -> state``
- ``ask(key, state, params) -> (population [M, D], state)``
- ``tell(key, population, scores [M, N], state, params) -> (state, metrics)``
- ``best(state) -> (model [D], its mean score)``: what a run reports.

Scores are per datapoint and higher is better. A :class:`Scorer` gives them for one model
([D] -> [N]), with ``metrics`` (model -> {name: scalar}) for the curves. When it is jittable,
:func:`run_search` compiles whole chunks of steps; when it is not (a Python function such as a
memoised language-model fitness), it runs the same steps in a host loop, ask and tell still
compiled. Both go through :func:`m2n2_jax.engine.chunk_loop.drive` (checkpoints, resume, progress)
and use one PRNG key chain, so a jittable scorer run as a Python one gives the same result.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.engine.budget import Plan
from m2n2_jax.engine.chunk_loop import RunOptions, compile_chunk, drive
from m2n2_jax.engine.devices import evaluate


@dataclasses.dataclass(frozen=True)
class Scorer:
    """Scores of one model [D] -> [N] (higher is better) and its metrics {name: scalar}.

    jittable: both are pure JAX functions (compiled into the chunk); otherwise they take and
    return numpy arrays and are called from Python, one population at a time.
    """

    score: Callable[[Any], Any]
    metrics: Callable[[Any], dict] = lambda model: {}
    jittable: bool = True


@flax.struct.dataclass
class SearchRuns:
    """The strategy's states of R runs (leading axis R) and one PRNG key per run."""

    state: Any
    key: jax.Array


def start_runs(strategy, params, scorer: Scorer, seeds: Sequence[int], seed_models) -> SearchRuns:
    """R = len(seeds) runs, each from PRNGKey(seed) and the same seed models [K, D] scored once."""
    seed_models = jnp.asarray(seed_models)
    seed_scores = jnp.asarray(_score_population(scorer, seed_models, 1))
    pairs = jax.vmap(lambda seed: jax.random.split(jax.random.PRNGKey(seed)))(jnp.asarray(seeds, jnp.uint32))
    state = jax.vmap(lambda k: strategy.init(k, seed_models, seed_scores, params))(pairs[:, 1])
    return SearchRuns(state, pairs[:, 0])


def _score_population(scorer: Scorer, population, eval_batch_size: int):
    """Scores [M, N] of a population [M, D]."""
    if scorer.jittable:
        return evaluate(scorer.score, population, eval_batch_size)
    return np.stack([np.asarray(scorer.score(np.asarray(x))) for x in np.asarray(population)])


def _split_ask(strategy, params):
    def ask_one(state, key):
        key, k_ask, k_tell = jax.random.split(key, 3)
        population, state = strategy.ask(k_ask, state, params)
        return population, state, key, k_tell

    return jax.vmap(ask_one)


def _tell(strategy, params):
    return jax.vmap(lambda k, population, scores, state: strategy.tell(k, population, scores, state, params)[0])


def make_step(strategy, params, scorer: Scorer, eval_batch_size: int = 1) -> Callable[[SearchRuns], SearchRuns]:
    """One compiled step of every run: ask, score (inside the program), tell."""
    ask, tell = _split_ask(strategy, params), _tell(strategy, params)

    def step(runs: SearchRuns) -> SearchRuns:
        population, state, key, k_tell = ask(runs.state, runs.key)
        r, m, d = population.shape
        scores = _score_population(scorer, population.reshape(r * m, d), eval_batch_size).reshape(r, m, -1)
        return SearchRuns(tell(k_tell, population, scores, state), key)

    return step


def make_log(strategy, scorer: Scorer) -> Callable[[SearchRuns], dict]:
    """{name: [R]}: the reported model's mean score (best_train_score) and metrics, per run."""
    best = jax.vmap(strategy.best)
    if scorer.jittable:
        def log(runs):
            models, scores = best(runs.state)
            return {"best_train_score": scores, **jax.vmap(scorer.metrics)(models)}

        return log
    best = jax.jit(best)

    def host_log(runs):
        models, scores = best(runs.state)
        rows = [scorer.metrics(np.asarray(m)) for m in np.asarray(models)]
        return {"best_train_score": np.asarray(scores), **{k: np.asarray([row[k] for row in rows]) for k in rows[0]}}

    return host_log


def host_chunk(strategy, params, scorer: Scorer, log: Callable) -> Callable:
    """``chunk(runs, num_logs, steps_per_log) -> (runs, {name: [num_logs, R]})`` as a Python loop
    around compiled ask and tell, calling the scorer from the host (the steps of :func:`make_step`)."""
    ask, tell = jax.jit(_split_ask(strategy, params)), jax.jit(_tell(strategy, params))

    def chunk(runs: SearchRuns, num_logs: int, steps_per_log: int):
        logged = []
        for _ in range(num_logs):
            for _ in range(steps_per_log):
                population, state, key, k_tell = ask(runs.state, runs.key)
                r, m, d = population.shape
                scores = _score_population(scorer, population.reshape(r * m, d), 1).reshape(r, m, -1)
                runs = SearchRuns(tell(k_tell, population, jnp.asarray(scores, jnp.float32), state), key)
            logged.append(log(runs))
        return runs, {k: np.stack([np.asarray(row[k]) for row in logged]) for k in logged[0]}

    return chunk


@dataclasses.dataclass
class SearchResult:
    """Final states [R, ...], the reported models [R, D] and curves {name: [R, L]} at ``forward_passes`` [L]."""

    runs: SearchRuns
    best: np.ndarray
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float


def run_search(strategy, params, scorer: Scorer, seeds: Sequence[int], seed_models, plan: Plan, *,
               options: RunOptions = RunOptions(), identity: dict | None = None) -> SearchResult:
    """Run ``strategy`` for R = len(seeds) runs over the budget of ``plan`` (``plan.fp_per_step``
    must be the population one ask returns), scoring with ``scorer``.

    identity: what a checkpoint of this run must agree on to be resumed (required with a
    checkpoint directory in ``options``).
    """
    start = time.perf_counter()
    runs = start_runs(strategy, params, scorer, seeds, seed_models)
    log = make_log(strategy, scorer)
    if scorer.jittable:
        chunk = compile_chunk(make_step(strategy, params, scorer, options.eval_batch_size or 1), log,
                              donate=options.checkpointing.directory is None)
        log = jax.jit(log)
    else:
        chunk = host_chunk(strategy, params, scorer, log)
    out = drive(runs, chunk, log, plan, options, identity=identity or {}, runs=len(seeds), start=start,
                headline="best_train_score")
    best = np.asarray(jax.vmap(lambda s: strategy.best(s)[0])(out.state.state))
    return SearchResult(out.state, best, out.forward_passes, out.metrics, out.wall_seconds)
