"""Run M2N2 on a task for a budget of forward passes: the engine's entry point.

:func:`evolve` builds the initial archives of R runs and hands them, with the
engine's compiled chunk (:func:`m2n2_jax.engine.runner.make_chunk`), to the one run
loop (:func:`m2n2_jax.engine.chunk_loop.drive`), which restores from and saves
checkpoints, shows progress and collects the metrics of each run's best member
at every logged forward pass. The algorithm's arguments (config, task, seeds,
budget, log points, start models) are apart from how it runs (progress,
checkpoints, devices: :class:`~m2n2_jax.engine.chunk_loop.RunOptions`).
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from m2n2_jax.engine import distributed
from m2n2_jax.engine import runner
from m2n2_jax.engine.devices import default_eval_batch_size, device_mesh
from m2n2_jax.engine.budget import Plan, plan_budget
from m2n2_jax.engine.identity import run_identity
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult, drive
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.algorithm.flatten import check_finite_seeds
from m2n2_jax.errors import ConfigError, SeedModelError
from m2n2_jax.tasks.base import Task


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The run seeds as ints, refusing none or negative ones."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"run seeds must be >= 0 (got {min(seeds)}); pass --seed 0 or more.")
    return seeds


def evolve(config: M2N2Config, task: Task, seeds: Sequence[int], forward_passes: int, *,
           log_every: int | None = None, seed_models=None, options: RunOptions = RunOptions(),
           method: str = "m2n2") -> RunResult:
    """Evolve R = len(seeds) independent runs for ``forward_passes`` children each.

    log_every: forward passes between logged points (default: about 500 points);
        the end of the budget is always logged.
    seed_models: [K, D] start models shared by all runs (None draws two random
        seeds per run, as the paper does from scratch).
    options: progress, checkpoints, devices, evaluation batch (see RunOptions).
    method: the name recorded in the result.

    Multi-host: every process calls evolve with the same arguments (devices default to
    ``jax.devices()``, all processes' devices) and gets the same, complete result.
    """
    seeds = check_seeds(seeds)
    if task.groups is not None and config.groups is None:
        config = config.replace(groups=task.groups)
    if seed_models is not None:
        if np.ndim(seed_models) != 2 or np.shape(seed_models)[0] < 2:
            raise SeedModelError(f"seed_models must be [K >= 2, D] flat models (got shape {np.shape(seed_models)}).")
        check_finite_seeds(seed_models)
    batch = config.children_per_step
    plan = plan_budget(forward_passes, batch, log_every)
    eval_batch_size = options.eval_batch_size or default_eval_batch_size(len(seeds) * batch)
    mesh = device_mesh(options.devices, len(seeds), batch)
    start = time.perf_counter()
    state = runner.init_runs(config, task, seeds, seed_models)
    identity = run_identity(config.to_dict(), task, seeds, plan.forward_passes, plan.log_every, seed_models,
                            options.identity_extra,  # from scratch the start scores depend on the seeds: a probe
                            start_scores=None if seed_models is None else state.archive.scores[0, :len(seed_models)])
    distributed.check_agreement(distributed.run_digests(identity, task, seed_models))  # multi-host: one line if they differ
    distributed.started()
    chunk = runner.make_chunk(config, task, plan.steps_per_log, eval_batch_size, mesh=mesh)
    out = drive(state, chunk, lambda s: runner.archive_metrics(task, s.archive), plan, options,
                identity=identity, runs=len(seeds), start=start, headline=task.headline_metric)
    execution = {"platform": jax.default_backend(), "eval_batch_size": int(eval_batch_size),
                 "devices": 1 if mesh is None else int(mesh.devices.size),
                 "sharding": None if mesh is None else mesh.axis_names[0]}
    archive = out.state.archive
    best = np.asarray(jax.vmap(lambda a: a.best_index)(archive))
    best_vectors = np.asarray(archive.params)[np.arange(len(best)), best]
    return RunResult(method, seeds, out.forward_passes, out.metrics, out.wall_seconds, config.to_dict(),
                     best_vectors, extra={"execution": execution}, task=task.name, state=out.state)
