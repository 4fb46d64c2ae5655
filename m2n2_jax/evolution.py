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

from . import runner
from .checkpoint import RunCheckpointer
from .config import M2N2Config
from .errors import ConfigError, M2N2Error, SeedModelError
from .tasks.base import Task


class Interrupted(M2N2Error):
    """The user stopped the run (Ctrl-C); the message says where it was saved."""


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


def differing_fields(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields on which two identities differ."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return out


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
    devices: the devices to spread the runs or children over (default: all local devices;
        see runner.device_mesh).
    """
    seeds = [int(s) for s in seeds]
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
    if checkpoint_every is not None:
        if checkpoint_every <= 0:
            raise ConfigError(f"--checkpoint-every must be positive (got {checkpoint_every}).")
        chunk_forward_passes = min(chunk_forward_passes, checkpoint_every)
    eval_batch_size = eval_batch_size or runner.default_eval_batch_size(len(seeds) * batch)
    mesh = runner.device_mesh(devices, len(seeds), batch)
    identity = run_identity(config, task, seeds, forward_passes, steps_per_log, seed_models, identity_extra)
    checkpointer = RunCheckpointer(checkpoint_dir) if checkpoint_dir else None

    start = time.perf_counter()
    state = runner.init_runs(config, task, seeds, seed_models)
    history = {k: [np.asarray(v)] for k, v in jax.device_get(runner.archive_metrics(task, state.archive)).items()}
    done_logs, elapsed_before = 0, 0.0
    if resume:
        if checkpointer is None:
            raise ConfigError("resuming needs the run's directory (checkpoint_dir).")
        state, meta = checkpointer.restore_latest(state)
        diff = differing_fields(meta["identity"], identity)
        if diff:
            raise ConfigError("the checkpoint was made with different settings: " + "; ".join(diff) +
                              ". Resume with the original settings, or start a new run in another --out.")
        state = jax.tree.map(jax.numpy.asarray, state)
        history = {k: [np.asarray(row, dtype=np.float32) for row in v] for k, v in meta["history"].items()}
        done_logs, elapsed_before = int(meta["done_logs"]), float(meta["elapsed_seconds"])

    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch_size, mesh=mesh)
    num_logs = steps // steps_per_log
    fp_per_log = steps_per_log * batch
    sizes = runner.chunk_sizes(num_logs, runner.logs_per_chunk_for(steps_per_log, batch, chunk_forward_passes))
    bar = _progress_bar(progress, forward_passes, len(seeds), done_logs * fp_per_log)
    last_save_logs, last_save_time = done_logs, time.perf_counter()

    def save(logs_done):
        meta = {"identity": identity, "done_logs": logs_done,
                "elapsed_seconds": elapsed_before + time.perf_counter() - start,
                "history": {k: [np.asarray(row).tolist() for row in v] for k, v in history.items()}}
        checkpointer.save(logs_done * fp_per_log, state, meta)

    try:
        while done_logs < num_logs:
            size = min(sizes[0], num_logs - done_logs)
            new_state, logged = chunk(state, size)
            logged = jax.device_get(logged)
            state = new_state
            for k, v in logged.items():
                history[k].extend(np.asarray(v))
            done_logs += size
            if bar is not None:
                bar(done_logs * fp_per_log, forward_passes, {k: np.asarray(v[-1]) for k, v in logged.items()})
            due = done_logs == num_logs or (
                checkpoint_every is not None and (done_logs - last_save_logs) * fp_per_log >= checkpoint_every) or (
                checkpoint_seconds is not None and time.perf_counter() - last_save_time >= checkpoint_seconds) or (
                checkpoint_every is None and checkpoint_seconds is None)
            if checkpointer is not None and due:
                save(done_logs)
                last_save_logs, last_save_time = done_logs, time.perf_counter()
    except KeyboardInterrupt:
        where = "nothing was saved (no output directory)"
        if checkpointer is not None:
            if done_logs > last_save_logs or not checkpointer.steps():
                save(done_logs)
            where = (f"saved a checkpoint at {done_logs * fp_per_log} forward passes per run in "
                     f"{checkpointer.path}; continue with --resume")
        raise Interrupted(f"interrupted by the user; {where}.") from None
    finally:
        if checkpointer is not None:
            checkpointer.close()
    jax.block_until_ready(state)
    wall = elapsed_before + time.perf_counter() - start
    fps = [i * fp_per_log for i in range(num_logs + 1)]
    metrics = {k: np.stack(v, axis=1) for k, v in history.items()}
    execution = {"platform": jax.default_backend(), "eval_batch_size": int(eval_batch_size),
                 "devices": 1 if mesh is None else int(mesh.devices.size),
                 "sharding": None if mesh is None else mesh.axis_names[0]}
    return EvolutionResult(config, task.name, seeds, fps, metrics, wall, state, execution)


def _progress_bar(progress, total: int, runs: int, initial: int = 0):
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="fp", unit_scale=True, desc=f"evolving {runs} run(s)",
               dynamic_ncols=True)

    def update(done, _total, last):
        bar.update(done - bar.n)
        if "test_accuracy" in last:
            bar.set_postfix(test_acc=f"{np.mean(last['test_accuracy']):.3f}")
        if done >= total:
            bar.close()

    return update
