"""Run M2N2 on a task for a budget of forward passes: the imperative driver.

:func:`evolve` builds the initial archives of R runs (or restores them from a
checkpoint), then advances them in compiled chunks (each a ``lax.scan`` over
log intervals), collecting the metrics of each run's best member at every
logged forward pass. Between chunks it advances a progress bar and saves
checkpoints; Ctrl-C saves the last completed chunk and raises
:class:`Interrupted`. Chunking never changes results: a resumed run ends
with exactly the archives and curves of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np

from . import distributed, runner
from .chunk_loop import Checkpointing, Interrupted, differing_fields, restore, run_chunks  # noqa: F401 (re-exported)
from .config import M2N2Config
from .errors import ConfigError, SeedModelError
from .tasks.base import Task


@dataclasses.dataclass
class EvolutionResult:
    """Curves of R runs: ``metrics[name]`` is [R, L] at ``forward_passes`` [L]."""

    config: M2N2Config
    task: str
    seeds: list[int]
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float
    state: runner.RunsState
    # how it ran (eval batch size, devices, sharding): float results can depend on these
    execution: dict = dataclasses.field(default_factory=dict)

    def best_vectors(self) -> np.ndarray:
        """[R, D] the best member (highest mean training score) of each run."""
        archive = self.state.archive
        best = np.asarray(jax.vmap(lambda a: a.best_index)(archive))
        return np.asarray(archive.params)[np.arange(len(best)), best]


def run_identity(config: M2N2Config, task: Task, seeds, forward_passes: int, steps_per_log: int,
                 seed_models, extra: dict | None = None) -> dict:
    """What a checkpoint must agree on to be resumed (JSON-serialisable)."""
    return {"config": config.to_dict(), "task": task.name, "seeds": [int(s) for s in seeds],
            "forward_passes": int(forward_passes),
            "log_every": int(steps_per_log * config.children_per_step),
            "init": "random" if seed_models is None else "given seed models",
            **(extra or {})}


def evolve(config: M2N2Config, task: Task, seeds: Sequence[int], forward_passes: int, *,
           log_every: int | None = None, seed_models=None, eval_batch_size: int | None = None,
           chunk_forward_passes: int = 2000, progress: bool | Callable = False,
           checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
           checkpoint_seconds: float | None = None, resume: bool = False,
           identity_extra: dict | None = None, devices=None) -> EvolutionResult:
    """Evolve R = len(seeds) independent runs for ``forward_passes`` children each.

    seed_models: [K, D] start models shared by all runs (None draws two random
        seeds per run, as the paper does from scratch).
    progress: True for a tqdm bar, or a callable(done_fp, total_fp, metrics).
    checkpoint_dir: save checkpoints there every ``checkpoint_every`` forward
        passes per run (default: every chunk) and/or ``checkpoint_seconds``,
        and at the end; ``resume=True`` continues from the newest good one.
    devices: the devices to spread the runs or children over (default: ``jax.devices()``, which
        under jax.distributed are all processes' devices; see runner.device_mesh). Multi-host:
        every process calls evolve with the same arguments and gets the same, complete result.
    """
    seeds = [int(s) for s in seeds]
    if task.groups is not None and config.groups is None:
        config = config.replace(groups=task.groups)
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"run seeds must be >= 0 (got {min(seeds)}); pass --seed 0 or more.")
    if seed_models is not None:
        from .flatten import check_finite_seeds

        if np.ndim(seed_models) != 2 or np.shape(seed_models)[0] < 2:
            raise SeedModelError(f"seed_models must be [K >= 2, D] flat models (got shape {np.shape(seed_models)}).")
        check_finite_seeds(seed_models)
    batch = config.children_per_step
    steps, steps_per_log = runner.plan_logging(forward_passes, batch, log_every)
    checkpointing = Checkpointing(checkpoint_dir, checkpoint_every, checkpoint_seconds, resume).checked()
    if checkpoint_every is not None:
        chunk_forward_passes = min(chunk_forward_passes, checkpoint_every)
    eval_batch_size = eval_batch_size or runner.default_eval_batch_size(len(seeds) * batch)
    mesh = runner.device_mesh(devices, len(seeds), batch)
    identity = run_identity(config, task, seeds, forward_passes, steps_per_log, seed_models, identity_extra)

    start = time.perf_counter()
    state = runner.init_runs(config, task, seeds, seed_models)
    history = {k: [np.asarray(v)] for k, v in jax.device_get(runner.archive_metrics(task, state.archive)).items()}
    done_logs, elapsed_before = 0, 0.0
    distributed.check_agreement(distributed.run_digests(identity, task, seed_models))  # multi-host: one line if they differ
    distributed.started()
    if resume:
        state, history, done_logs, elapsed_before = restore(checkpoint_dir, state, identity)

    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch_size, mesh=mesh)
    num_logs = steps // steps_per_log
    fp_per_log = steps_per_log * batch
    sizes = runner.chunk_sizes(num_logs, runner.logs_per_chunk_for(steps_per_log, batch, chunk_forward_passes))
    bar = _progress_bar(progress, forward_passes, len(seeds), done_logs * fp_per_log)
    state, wall = run_chunks(chunk, state, history, num_logs=num_logs, sizes=sizes, fp_per_log=fp_per_log,
                             forward_passes=forward_passes, bar=bar, checkpointing=checkpointing,
                             identity=identity, done_logs=done_logs, elapsed_before=elapsed_before, start=start)
    state = distributed.local_tree(state)  # multi-host: every process gets all runs
    fps = [i * fp_per_log for i in range(num_logs + 1)]
    metrics = {k: np.stack(v, axis=1) for k, v in history.items()}
    execution = {"platform": jax.default_backend(), "eval_batch_size": int(eval_batch_size),
                 "devices": 1 if mesh is None else int(mesh.devices.size),
                 "sharding": None if mesh is None else mesh.axis_names[0]}
    return EvolutionResult(config, task.name, seeds, fps, metrics, wall, state, execution)


def _progress_bar(progress, total: int, runs: int, initial: int = 0):
    """A tqdm bar over all runs' forward passes (so its rate is the throughput), or the given callable.

    Multi-host: process 0 only.
    """
    if not distributed.is_main():
        return None
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total * runs, initial=initial * runs, unit="fp", unit_scale=True,
               desc=f"{runs} run(s) x {total:,} forward passes", dynamic_ncols=True)

    def update(done, _total, last):
        bar.update(done * runs - bar.n)
        if "test_accuracy" in last:
            bar.set_postfix(test_acc=f"{np.mean(last['test_accuracy']):.3f}")
        if done >= total:
            bar.close()

    return update
