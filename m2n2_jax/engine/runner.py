"""Several independent M2N2 runs as one compiled program, in chunks.

All runs share one jitted step: children of every run are drawn (vmap over
runs), evaluated together with ``jax.lax.map`` (faster than one big vmap on
CPUs), and told to their own archives (vmap). A chunk of steps runs inside
``jax.lax.scan`` and returns the logged metrics, so a Python loop around the
chunks can show progress and save checkpoints between them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from m2n2_jax.algorithm import strategy
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.engine import search
from m2n2_jax.engine.chunk_loop import scan_logs
from m2n2_jax.engine.devices import evaluate, replicate, sharded_evaluate
from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks.base import Task


@flax.struct.dataclass
class RunsState:
    """R runs: archives with a leading run axis, one PRNG key per run, steps done."""

    archive: strategy.ArchiveState
    key: jax.Array
    step: jax.Array


def runs_spec(state: RunsState):
    """PartitionSpecs of a RunsState split along its run axis (the step counter is shared)."""
    from jax.sharding import PartitionSpec as P

    return RunsState(archive=jax.tree.map(lambda _: P("runs"), state.archive), key=P("runs"), step=P())


def shard_runs(state: RunsState, mesh) -> RunsState:
    """Place each device's runs on it."""
    from jax.sharding import NamedSharding

    return jax.device_put(state, jax.tree.map(lambda p: NamedSharding(mesh, p), runs_spec(state)))


def init_runs(config: M2N2Config, task: Task, run_seeds: Sequence[int], seed_models=None) -> RunsState:
    """Archives of R runs. Run r uses PRNGKey(run_seeds[r]).

    From scratch (seed_models None) each run splits its key into
    (key, k_1, k_2) and draws its two seeds from k_1, k_2, as the reference
    does; otherwise every run starts from the given seed models [K, D].
    """
    if len(run_seeds) < 1:
        raise ConfigError("at least one run is needed (got 0 run seeds); pass --runs 1 or more.")

    strat = strategy.M2N2(config.for_capacity(task.capacity), layout=task.layout)
    params = config.params()

    def one(seed):
        key, seeds = run_start(task, seed, seed_models)
        scores = evaluate(task.score_vector, seeds, 1)
        return strat.init(key, seeds, scores, params, task.capacity), key

    archive, keys = jax.jit(jax.vmap(one))(jnp.asarray(run_seeds, jnp.uint32))
    return RunsState(archive=archive, key=keys, step=jnp.zeros((), jnp.int32))


def run_start(task: Task, seed, seed_models=None):
    """(key, seeds [K, D]) of a run: PRNGKey(seed) split into (key, k_1, k_2), the two
    N(0, 0.01^2) seeds drawn from k_1, k_2 as the reference does; or the given models."""
    key = jax.random.PRNGKey(seed)
    if seed_models is not None:
        return key, jnp.asarray(seed_models)
    key, k_a, k_b = jax.random.split(key, 3)
    return key, jnp.stack([task.random_seed(k_a), task.random_seed(k_b)])


def make_step(config: M2N2Config, task: Task, eval_batch_size: int, mesh=None):
    """One step of all runs: ask (B children each), evaluate all (sharded over the mesh), tell.

    The step is :func:`m2n2_jax.engine.search.make_step` (the one ask-score-tell step) with
    the engine's key chain (:data:`~m2n2_jax.engine.search.ENGINE`): each run's key is split
    into (next, sub) and ``sub`` goes to the strategy's ``ask``, which owns the key order (in
    reference order it uses the key in its state instead).
    """
    strat = strategy.M2N2(config.for_capacity(task.capacity), layout=task.layout)
    search_step = search.make_step(strat, config.params(), search.Scorer(task.score_vector), keys=search.ENGINE,
                                   score_population=sharded_evaluate(task.score_vector, mesh, eval_batch_size))

    def step(state: RunsState) -> RunsState:
        runs = search_step(search.SearchRuns(state.archive, state.key))
        return RunsState(archive=runs.state, key=runs.key, step=state.step + 1)

    return step


def archive_metrics(task: Task, archive: strategy.ArchiveState) -> dict:
    """Metrics of each run's best member (highest mean training score)."""

    def one(a):
        best = a.best_index
        return {**task.metrics(a.params[best]), "best_train_score": jnp.mean(a.scores[best]),
                "inserted": a.inserted}

    return jax.vmap(one)(archive)


def make_chunk(config: M2N2Config, task: Task, steps_per_log: int, eval_batch_size: int, mesh=None):
    """jit(state, num_logs, steps_per_log=steps_per_log) -> (state, metrics [num_logs, R]).

    The scan over log intervals is chunk_loop.scan_logs, shared with every method.
    With a "runs" mesh every device advances its own runs with no
    communication; with a "children" mesh the children of each step are
    sharded (see device_mesh).
    """
    by_runs = mesh is not None and mesh.axis_names == ("runs",)
    step = make_step(config, task, eval_batch_size, None if by_runs else mesh)
    scan_chunk = scan_logs(step, lambda state: archive_metrics(task, state.archive))

    if not by_runs:
        jitted = jax.jit(scan_chunk, static_argnums=(1, 2))

        def chunk(state: RunsState, num_logs: int, steps: int = steps_per_log):
            return jitted(state if mesh is None else replicate(state, mesh), num_logs, steps)

        return chunk

    from jax.sharding import PartitionSpec as P

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def chunk_by_runs(state: RunsState, num_logs: int, steps: int):
        spec = runs_spec(state)
        local = jax.shard_map(functools.partial(scan_chunk, num_logs=num_logs, steps_per_log=steps), mesh=mesh,
                              in_specs=(spec,), out_specs=(spec, P(None, "runs")), check_vma=False)
        return local(state)

    return lambda state, num_logs, steps=steps_per_log: chunk_by_runs(shard_runs(state, mesh), num_logs, steps)


