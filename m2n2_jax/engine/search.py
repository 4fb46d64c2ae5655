"""One search interface, and one run function for every strategy that has it.

A strategy has evosax's shape (:class:`~m2n2_jax.algorithm.strategy.M2N2` has it; so do
:class:`~m2n2_jax.methods.evosax_es.EvosaxSearch` and :class:`~m2n2_jax.methods.brute_force.SlerpSweep`):

- ``init(key, seeds [K, D], seed_scores [K, N], params) -> state``
- ``ask(key, state, params) -> (population [M, D], state)``
- ``tell(key, population, scores [M, N], state, params) -> (state, metrics)``
- ``best(state) -> (model [D], its mean score)``: what a run reports.
- optionally ``logged(state) -> {name: scalar}``: counters logged beside the best model's metrics.

A strategy whose state is not an array pytree (the recipe archive,
:class:`~m2n2_jax.algorithm.recipes.RecipeM2N2`) says ``on_host = True``: its runs are kept as a
list of states and stepped one after another in Python, its population is whatever its ``ask``
returns (recipes), and its scorer scores such candidates. :class:`OnHost` runs any strategy so.

How a run uses its PRNG key is a :class:`KeyChain`: :data:`THREE_WAY` (the default) or
:data:`ENGINE`, the dense M2N2 engine's and the recipe archive's order, under which their
runs give the numbers they always gave.

Scores are per datapoint and higher is better. A :class:`Scorer` gives them for one model
([D] -> [N]), with ``metrics`` (model -> {name: scalar}) for the curves. When it is jittable,
:func:`run_search` compiles whole chunks of steps; when it is not (a Python function such as a
memoised language-model fitness), it runs the same steps in a host loop, ask and tell still
compiled. Both go through :func:`m2n2_jax.engine.chunk_loop.drive` (checkpoints, resume, progress)
and use one PRNG key chain, so a jittable scorer run as a Python one gives the same result.
:func:`make_step` is the one ask-score-tell step: the dense engine
(:mod:`m2n2_jax.engine.runner`) and the evosax runs build their compiled chunks from it.
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
from m2n2_jax.engine.chunk_loop import RunOptions, Saved, compile_chunk, drive
from m2n2_jax.engine.devices import evaluate


@dataclasses.dataclass(frozen=True)
class Scorer:
    """Scores of one model [D] -> [N] (higher is better) and its metrics {name: scalar}.

    jittable: both are pure JAX functions (compiled into the chunk); otherwise they take and
    return numpy arrays (or a host strategy's candidates) and are called from Python.
    batch: optional, not jittable: a population -> scores [M, N] at once (e.g. on several devices).
    """

    score: Callable[[Any], Any]
    metrics: Callable[[Any], dict] = lambda model: {}
    jittable: bool = True
    batch: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class KeyChain:
    """How a run uses its key: ``start(PRNGKey(seed)) -> (run key, init key)`` and, every step,
    ``step(key) -> (next key, ask key, tell key)``."""

    start: Callable
    step: Callable


def _three_way(key):
    key, k_ask, k_tell = jax.random.split(key, 3)
    return key, k_ask, k_tell


def _engine_step(key):
    key, sub = jax.random.split(key)
    return key, sub, sub  # tell draws nothing; it gets the ask key only for evosax's signature


THREE_WAY = KeyChain(start=lambda key: tuple(jax.random.split(key)), step=_three_way)
ENGINE = KeyChain(start=lambda key: (key, key), step=_engine_step)


@flax.struct.dataclass
class SearchRuns:
    """The strategy's states of R runs (leading axis R) and one PRNG key per run."""

    state: Any
    key: jax.Array


@dataclasses.dataclass
class HostRuns:
    """R runs of a host strategy: a list of states and their keys [R, 2] (numpy)."""

    state: list
    key: np.ndarray


def on_host(strategy) -> bool:
    return bool(getattr(strategy, "on_host", False))


@dataclasses.dataclass(frozen=True, eq=False)
class OnHost:
    """``strategy`` run as a host strategy: each run stepped on its own in Python, unbatched, its
    ``ask`` and ``tell`` compiled one call at a time (``jit``) or run op by op: the arithmetic of
    a plain Python loop of that strategy, for callers whose numbers come from one."""

    strategy: Any
    jit: bool = True
    on_host = True

    def __post_init__(self):
        compiled = jax.jit if self.jit else (lambda f: f)
        object.__setattr__(self, "ask", compiled(self.strategy.ask))
        object.__setattr__(self, "tell", compiled(self.strategy.tell))

    def init(self, key, seeds, seed_scores, params):
        return self.strategy.init(key, jnp.asarray(seeds), jnp.asarray(seed_scores), params)

    def best(self, state):
        return self.strategy.best(state)


def start_runs(strategy, params, scorer: Scorer, seeds: Sequence[int], seed_models, seed_scores=None,
               keys: KeyChain = THREE_WAY):
    """R = len(seeds) runs, each from PRNGKey(seed) and the same seed models [K, D] scored once
    (``seed_scores`` [K, N] when the caller has them)."""
    if seed_scores is None:
        seed_scores = _score_population(scorer, seed_models, 1)
    if on_host(strategy):
        pairs = [keys.start(jax.random.PRNGKey(int(s))) for s in seeds]
        states = [strategy.init(k_init, seed_models, seed_scores, params) for _, k_init in pairs]
        return HostRuns(states, np.stack([np.asarray(k) for k, _ in pairs]))
    seed_models, seed_scores = jnp.asarray(seed_models), jnp.asarray(seed_scores)
    pairs = jax.vmap(lambda seed: jnp.stack(keys.start(jax.random.PRNGKey(seed))))(jnp.asarray(seeds, jnp.uint32))
    state = jax.vmap(lambda k: strategy.init(k, seed_models, seed_scores, params))(pairs[:, 1])
    return SearchRuns(state, pairs[:, 0])


def _score_population(scorer: Scorer, population, eval_batch_size: int):
    """Scores [M, N] of a population [M, D] (or a host strategy's list of candidates)."""
    if scorer.jittable:
        return evaluate(scorer.score, population, eval_batch_size)
    if scorer.batch is not None:
        return np.asarray(scorer.batch(population))
    members = population if isinstance(population, (list, tuple)) else np.asarray(population)
    return np.stack([np.asarray(scorer.score(x)) for x in members])


def _ask(strategy, params, keys: KeyChain, batched: bool = True):
    def ask_one(state, key):
        key, k_ask, k_tell = keys.step(key)
        population, state = strategy.ask(k_ask, state, params)
        return population, state, key, k_tell

    return jax.vmap(ask_one) if batched else ask_one


def _tell(strategy, params, batched: bool = True):
    def tell_one(key, population, scores, state):
        return strategy.tell(key, population, scores, state, params)[0]

    return jax.vmap(tell_one) if batched else tell_one


def make_step(strategy, params, scorer: Scorer, eval_batch_size: int = 1, *, keys: KeyChain = THREE_WAY,
              score_population: Callable | None = None, batched: bool = True,
              return_scores: bool = False) -> Callable[[SearchRuns], SearchRuns]:
    """One compiled step of every run: ask, score (inside the program), tell.

    score_population: population [M, D] -> scores [M, N] (default: the scorer's, in batches of
    ``eval_batch_size``; the engine passes a sharded one). batched: the state has a leading run
    axis (False: one run, unbatched, so a ``lax.cond`` in the strategy stays a real branch).
    return_scores: the step returns (runs, the population's scores) (for per-step records).
    """
    ask, tell = _ask(strategy, params, keys, batched), _tell(strategy, params, batched)
    score = score_population or (lambda population: _score_population(scorer, population, eval_batch_size))

    def step(runs: SearchRuns) -> SearchRuns:
        population, state, key, k_tell = ask(runs.state, runs.key)
        lead = population.shape[:2 if batched else 1]  # (R, M) or (M,)
        scores = score(population.reshape((-1,) + population.shape[len(lead):])).reshape(lead + (-1,))
        runs = SearchRuns(tell(k_tell, population, scores, state), key)
        return (runs, scores) if return_scores else runs

    return step


def make_log(strategy, scorer: Scorer) -> Callable[[SearchRuns], dict]:
    """{name: [R]}: the reported model's mean score (best_train_score) and metrics, per run
    (a host strategy's: its metrics, best_train_score, then what its ``logged`` counts)."""
    counted = getattr(strategy, "logged", None)
    logged = counted or (lambda state: {})
    if on_host(strategy):
        def host_strategy_log(runs):
            rows = []
            for state in runs.state:
                model, score = strategy.best(state)
                rows.append({**{k: float(v) for k, v in scorer.metrics(model).items()},
                             "best_train_score": float(score), **logged(state)})
            return {k: np.asarray([row[k] for row in rows], np.float32) for k in rows[0]}

        return host_strategy_log
    best = jax.vmap(strategy.best)
    if scorer.jittable:
        def log(runs):
            models, scores = best(runs.state)
            counts = jax.vmap(counted)(runs.state) if counted else {}
            return {"best_train_score": scores, **jax.vmap(scorer.metrics)(models), **counts}

        return log
    best, counters = jax.jit(best), jax.jit(jax.vmap(logged)) if counted else (lambda state: {})

    def host_log(runs):
        models, scores = best(runs.state)
        rows = [scorer.metrics(np.asarray(m)) for m in np.asarray(models)]
        return {"best_train_score": np.asarray(scores), **{k: np.asarray([row[k] for row in rows]) for k in rows[0]},
                **{k: np.asarray(v) for k, v in counters(runs.state).items()}}

    return host_log


def _stacked(logged: list) -> dict:
    return {k: np.stack([np.asarray(row[k]) for row in logged]) for k in logged[0]}


def host_chunk(strategy, params, scorer: Scorer, log: Callable, keys: KeyChain = THREE_WAY) -> Callable:
    """``chunk(runs, num_logs, steps_per_log) -> (runs, {name: [num_logs, R]})`` as a Python loop
    around compiled ask and tell, calling the scorer from the host (the steps of :func:`make_step`)."""
    if on_host(strategy):
        return _host_strategy_chunk(strategy, params, scorer, log, keys)
    ask, tell = jax.jit(_ask(strategy, params, keys)), jax.jit(_tell(strategy, params))

    def chunk(runs: SearchRuns, num_logs: int, steps_per_log: int):
        logged = []
        for _ in range(num_logs):
            for _ in range(steps_per_log):
                population, state, key, k_tell = ask(runs.state, runs.key)
                r, m = population.shape[:2]
                scores = _score_population(scorer, population.reshape((r * m,) + population.shape[2:]), 1)
                scores = np.reshape(scores, (r, m, -1))
                runs = SearchRuns(tell(k_tell, population, jnp.asarray(scores, jnp.float32), state), key)
            logged.append(log(runs))
        return runs, _stacked(logged)

    return chunk


def _host_strategy_chunk(strategy, params, scorer: Scorer, log: Callable, keys: KeyChain) -> Callable:
    """The host loop of a host strategy: each run's steps one after another, in Python."""

    def chunk(runs: HostRuns, num_logs: int, steps_per_log: int):
        states, run_keys = list(runs.state), runs.key.copy()
        logged = []
        for _ in range(num_logs):
            for r in range(len(states)):
                key = jnp.asarray(run_keys[r])
                for _ in range(steps_per_log):
                    key, k_ask, k_tell = keys.step(key)
                    population, states[r] = strategy.ask(k_ask, states[r], params)
                    scores = _score_population(scorer, population, 1)
                    states[r], _ = strategy.tell(k_tell, population, jnp.asarray(scores), states[r], params)
                run_keys[r] = np.asarray(key)
            logged.append(log(HostRuns(states, run_keys)))
        return HostRuns(states, run_keys), _stacked(logged)

    return chunk


@dataclasses.dataclass
class SearchResult:
    """Final states [R, ...], the reported models [R, D] and curves {name: [R, L]} at ``forward_passes`` [L]."""

    runs: SearchRuns | HostRuns
    best: np.ndarray | list
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float


def run_search(strategy, params, scorer: Scorer, seeds: Sequence[int], seed_models, plan: Plan, *,
               options: RunOptions = RunOptions(), identity: dict | None = None, seed_scores=None,
               keys: KeyChain = THREE_WAY, saved: Saved = Saved(), headline: str = "best_train_score",
               start: float | None = None) -> SearchResult:
    """Run ``strategy`` for R = len(seeds) runs over the budget of ``plan`` (``plan.fp_per_step``
    must be the population one ask returns), scoring with ``scorer``: the one run function.

    identity: what a checkpoint of this run must agree on to be resumed (required with a
    checkpoint directory in ``options``). seed_scores: [K, N] of ``seed_models`` when the caller
    has them (else scored here). keys: the runs' key chain. saved: how a state that is not
    only arrays goes into a checkpoint. A host strategy's ``best`` is a list of its candidates.
    """
    start = time.perf_counter() if start is None else start
    runs = start_runs(strategy, params, scorer, seeds, seed_models, seed_scores, keys)
    log = make_log(strategy, scorer)
    if scorer.jittable and not on_host(strategy):
        chunk = compile_chunk(make_step(strategy, params, scorer, options.eval_batch_size or 1, keys=keys), log,
                              donate=options.checkpointing.directory is None)
        log = jax.jit(log)
    else:
        chunk = host_chunk(strategy, params, scorer, log, keys)
    out = drive(runs, chunk, log, plan, options, identity=identity or {}, runs=len(seeds), start=start,
                headline=headline, saved=saved)
    if on_host(strategy):
        best = [strategy.best(state)[0] for state in out.state.state]
    else:
        best = np.asarray(jax.vmap(lambda s: strategy.best(s)[0])(out.state.state))
    return SearchResult(out.state, best, out.forward_passes, out.metrics, out.wall_seconds)
