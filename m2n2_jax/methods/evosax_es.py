"""Evolution strategies from evosax as baselines: CMA-ES and friends.

Every strategy starts from one point drawn N(0, 0.01^2) per run (the paper's
start), has a population of 20 (20 forward passes per generation) and
maximises training accuracy. evosax minimises, so the fitness handed to
``tell`` is minus the training accuracy; the reported model of a run is the
best solution seen so far (lowest evosax fitness = highest training accuracy),
the analogue of M2N2's best archive member.

Full CMA-ES (:class:`LazyCMA_ES`) keeps evosax's update but eigendecomposes its
D x D covariance only every ``eigen_every`` generations (as pycma does) and
never at generation 0, where C is the identity; it runs the seeds one after
another, unbatched, with BLAS/LAPACK limited to one thread (see
:func:`single_thread_blas`). The others run all seeds in one vmapped program.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms import CMA_ES, LM_MA_ES, Open_ES, Sep_CMA_ES, SimpleGA
from evosax.algorithms.distribution_based.cma_es import eigen_decomposition

from m2n2_jax.engine import search
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult, Saved, drive_steps, latest_meta
from m2n2_jax.engine.identity import run_identity
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods.es_strategies import POPULATION, START_STD, STRATEGIES, ESSpec
from m2n2_jax.tasks.base import Task

CMA_CHUNK_FORWARD_PASSES = 200  # full CMA-ES: time every 10 generations


class LazyCMA_ES(CMA_ES):
    """evosax CMA-ES whose eigendecomposition of C runs every ``eigen_every`` generations.

    Between decompositions the last (B, D) keep sampling, as in pycma's lazy
    update; C itself is updated every generation. Sampling uses ``(z * D) @ B.T``
    instead of a product with a dense diag(D).
    """

    def __init__(self, population_size: int, solution, eigen_every: int | None = None, **kwargs):
        super().__init__(population_size, solution, **kwargs)
        self.eigen_every = eigen_every or self.lazy_gap()

    def lazy_gap(self) -> int:
        """Generations between decompositions: 1 / (10 D (c_1 + c_mu)), Hansen's O(D^2) rule."""
        p = self._default_params
        return max(1, int(1.0 / (10 * self.num_dims * float(p.c_1 + p.c_mu))))

    def _ask(self, key, state, params):
        due = (state.generation_counter % self.eigen_every == 0) & (state.generation_counter > 0)
        C, B, D = jax.lax.cond(due, eigen_decomposition, lambda c: (c, state.B, state.D), state.C)
        z = jax.random.normal(key, (self.population_size, self.num_dims))
        population = state.mean + state.std * ((z * D) @ B.T)
        return population, state.replace(C=C, B=B, D=D)


@dataclasses.dataclass(frozen=True)
class EvosaxSearch:
    """An evosax strategy with the search interface (m2n2_jax.engine.search): it maximises the
    mean score (evosax minimises, so it is told minus that), starting from the first seed model
    with that model's score as the best so far."""

    es: Any

    def init(self, key, seeds, seed_scores, params):
        state = self.es.init(key, seeds[0], params)
        return state.replace(best_solution=jnp.reshape(seeds[0], state.best_solution.shape),  # evosax keeps it flat
                             best_fitness=-jnp.mean(seed_scores[0]))

    def ask(self, key, state, params):
        return self.es.ask(key, state, params)

    def tell(self, key, population, scores, state, params):
        return self.es.tell(key, population, -jnp.mean(scores, axis=1), state, params)

    def best(self, state):
        return state.best_solution, -state.best_fitness


def _open_es(pop, sol, sigma=0.01, lr=0.003):
    return Open_ES(pop, sol, optimizer=optax.adam(lr), std_schedule=optax.constant_schedule(sigma))


def _simple_ga(pop, sol, sigma=0.01):
    return SimpleGA(pop, sol, std_schedule=optax.constant_schedule(sigma))


def spec_of(method: str) -> ESSpec:
    """The settings of an evosax method."""
    if method not in STRATEGIES:
        raise ConfigError(f"{method} is not an evosax strategy; choose one of: {', '.join(STRATEGIES)}.")
    return STRATEGIES[method]


@flax.struct.dataclass
class ESRuns:
    """evosax states (leading run axis when batched) and one PRNG key per run."""

    es: object
    key: jax.Array


@contextlib.contextmanager
def single_thread_blas():
    """Limit OpenBLAS/OpenMP pools to one thread (eigh is far slower with two threads: docs/baselines.md, "Threads")."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield


def build(method: str, num_params: int, sigma: float | None = None, eigen_every: int | None = None):
    """(strategy, params, spec) for a named ES method on D = num_params."""
    spec = spec_of(method)
    sigma = spec.sigma if sigma is None else float(sigma)
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0 (got {sigma}); the paper uses 0.01.")
    solution = jnp.zeros((num_params,), jnp.float32)
    es = {"CMA_ES": lambda: LazyCMA_ES(POPULATION, solution, eigen_every=eigen_every),
          "Sep_CMA_ES": lambda: Sep_CMA_ES(POPULATION, solution),
          "LM_MA_ES": lambda: LM_MA_ES(POPULATION, solution),
          "Open_ES": lambda: _open_es(POPULATION, solution, sigma),
          "SimpleGA": lambda: _simple_ga(POPULATION, solution, sigma)}[spec.strategy]()
    params = es.default_params
    if hasattr(params, "std_init"):
        params = params.replace(std_init=jnp.asarray(sigma, jnp.float32))
    return es, params, spec


def train_accuracy(task: Task) -> Callable:
    return lambda v: jnp.mean(task.score_vector(v))


def init_run(es, params, spec: ESSpec, task: Task, seed) -> ESRuns:
    """State of one run: start N(0, 0.01^2) from PRNGKey(seed), its accuracy as best so far."""
    key = jax.random.PRNGKey(seed)
    key, k_start, k_init = jax.random.split(key, 3)
    start = jax.random.normal(k_start, (task.num_params,)) * START_STD
    if spec.population_based:  # every member is the start, unevaluated: generation 1 mutates it
        state = es.init(k_init, jnp.tile(start, (es.population_size, 1)),
                        jnp.full((es.population_size,), jnp.inf), params)
    else:
        state = es.init(k_init, start, params)
    state = state.replace(best_solution=start, best_fitness=-train_accuracy(task)(start))
    return ESRuns(es=state, key=key)


def make_step(es, params, task: Task, eval_batch_size: int, batched: bool, return_accuracy: bool = False):
    """One generation: ask, evaluate on the training set, tell minus the accuracy: the one
    search step (:func:`m2n2_jax.engine.search.make_step`) of :class:`EvosaxSearch`, scored by
    the training accuracy as a one-datapoint score (its mean is itself).

    return_accuracy: the step returns (runs, the population's accuracies [..., P]).
    """
    acc = train_accuracy(task)
    search_step = search.make_step(EvosaxSearch(es), params, search.Scorer(lambda v: acc(v)[None]),
                                   eval_batch_size, batched=batched, return_scores=True)

    def step(runs: ESRuns):
        out, scores = search_step(search.SearchRuns(runs.es, runs.key))
        runs = ESRuns(es=out.state, key=out.key)
        return (runs, scores[..., 0]) if return_accuracy else runs

    return step


def make_log(task: Task, batched: bool):
    def one(s):
        return {**task.metrics(s.best_solution), "best_train_score": -s.best_fitness, "sigma": s.std}

    if batched:
        return lambda runs: jax.vmap(one)(runs.es)
    return lambda runs: jax.tree.map(lambda v: v[None], one(runs.es))


def _finished_full_cma_runs(options: RunOptions, identity: dict):
    """(finished runs {metrics, best, chunk_seconds}, index of the run to continue, its logs done)
    from the newest full CMA-ES checkpoint; nothing finished when not resuming."""
    if not options.checkpointing.resume:
        return {"metrics": [], "best": [], "chunk_seconds": []}, 0, 0
    meta = latest_meta(options.checkpointing.directory, identity)
    return meta["finished_runs"], int(meta["run_index"]), int(meta["done_logs"])


def run_es(method: str, task: Task, seeds: Sequence[int], forward_passes: int, *,
           log_every: int | None = None, sigma: float | None = None, eigen_every: int | None = None,
           options: RunOptions = RunOptions()) -> RunResult:
    """R = len(seeds) runs of an evosax strategy for ``forward_passes`` evaluations each.

    options: progress, checkpoints (saved and resumed as the engine does; full CMA-ES
    runs one run at a time, its checkpoints hold the current run's state and the
    finished runs' results) and the evaluation batch (default 2).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    if forward_passes % POPULATION:
        raise ConfigError(f"the budget {forward_passes} must be a multiple of the population ({POPULATION}).")
    plan = plan_budget(forward_passes, POPULATION, log_every)
    eval_batch_size = options.eval_batch_size or 2
    start = time.perf_counter()
    es, params, spec = build(method, task.num_params, sigma, eigen_every=eigen_every)
    used_sigma = spec.sigma if sigma is None else float(sigma)
    config = {"method": method, "strategy": type(es).__name__, "population_size": POPULATION,
              "sigma": used_sigma, "start": f"N(0, {START_STD}^2)", "fitness": "minus training accuracy (evosax minimises)",
              "about": spec.about}
    if isinstance(es, LazyCMA_ES):
        config["eigen_every"] = es.eigen_every
    step = make_step(es, params, task, eval_batch_size, spec.batched)
    log = make_log(task, spec.batched)
    if spec.batched:
        state = jax.jit(jax.vmap(lambda s: init_run(es, params, spec, task, s)))(jnp.asarray(seeds, jnp.uint32))
        identity = run_identity(config, task, seeds, forward_passes, log_every, None, options.identity_extra)
        out = drive_steps(state, step, log, plan, options, identity=identity, runs=len(seeds), start=start)
        best = np.asarray(out.state.es.best_solution)
        return RunResult(method, seeds, out.forward_passes, out.metrics, out.wall_seconds, config, best,
                         task=task.name)
    # Full CMA-ES: one run at a time (a D x D state each; lax.cond stays a real branch). Checkpoints of
    # all runs share one directory: steps run_index * budget + fp, the finished runs' curves and best
    # models in the JSON item, and only the newest two kept (each holds D x D matrices).
    identity = run_identity(config, task, seeds, forward_passes, log_every, None, options.identity_extra)
    done_runs, start_index, resume_logs = _finished_full_cma_runs(options, identity)
    per_run = [{k: np.asarray(v, np.float32) for k, v in m.items()} for m in done_runs["metrics"]]
    bests = [np.asarray(b, np.float32) for b in done_runs["best"]]
    chunk_seconds = [list(c) for c in done_runs["chunk_seconds"]]
    with single_thread_blas():
        for index, seed in enumerate(seeds):
            if index < start_index:
                continue
            state = jax.jit(lambda s: init_run(es, params, spec, task, s))(jnp.uint32(seed))
            stamps = [(0, time.perf_counter())]

            def timer(done, total, last, _stamps=stamps):
                _stamps.append((done, time.perf_counter()))
                if callable(options.progress):
                    options.progress(done, total, last)

            checkpointing = options.checkpointing
            run_options = options.replace(progress=timer, chunk_forward_passes=CMA_CHUNK_FORWARD_PASSES,
                                          checkpointing=dataclasses.replace(
                                              checkpointing, keep=2,
                                              resume=checkpointing.resume and index == start_index and resume_logs > 0))
            extra_meta = {"run_index": index, "finished_runs": {
                "metrics": [{k: v.tolist() for k, v in m.items()} for m in per_run],
                "best": [b.tolist() for b in bests], "chunk_seconds": chunk_seconds}}
            out = drive_steps(state, step, log, plan, run_options, identity=identity, runs=1,
                              step_offset=index * forward_passes, saved=Saved(meta=lambda _s, m=extra_meta: m))
            metrics, state = out.metrics, out.state
            chunk_seconds.append([round((t1 - t0) / ((d1 - d0) // POPULATION), 3)
                                  for (d0, t0), (d1, t1) in zip(stamps, stamps[1:])])
            per_run.append(metrics)
            bests.append(np.asarray(state.es.best_solution))
            del state
    metrics = {k: np.concatenate([m[k] for m in per_run]) for k in per_run[0]}
    wall = time.perf_counter() - start
    steady = [s for run in chunk_seconds for s in run[1:]]  # the first chunk includes compilation
    extra = {"seconds_per_generation_by_chunk": chunk_seconds,
             "seconds_per_generation_steady": round(float(np.median(steady)), 3) if steady else None,
             "generations_per_chunk": CMA_CHUNK_FORWARD_PASSES // POPULATION,
             "eigendecompositions_per_run": (forward_passes // POPULATION - 1) // es.eigen_every}
    return RunResult(method, seeds, plan.log_points, metrics, wall, config, np.stack(bests), extra=extra,
                     task=task.name)
