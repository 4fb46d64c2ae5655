"""Run M2N2 on a task for a budget of forward passes: the imperative driver.

:func:`evolve` builds the initial archives of R runs, then advances them in
compiled chunks (each a ``lax.scan`` over log intervals), collecting the
metrics of each run's best member at every logged forward pass and advancing
an optional progress bar between chunks.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np

from . import runner
from .config import M2N2Config
from .errors import ConfigError
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

    def best_vectors(self) -> np.ndarray:
        """[R, D] the best member (highest mean training score) of each run."""
        archive = self.state.archive
        best = np.asarray(jax.vmap(lambda a: a.best_index)(archive))
        return np.asarray(archive.params)[np.arange(len(best)), best]


def evolve(config: M2N2Config, task: Task, seeds: Sequence[int], forward_passes: int, *,
           log_every: int | None = None, seed_models=None, eval_batch_size: int | None = None,
           chunk_forward_passes: int = 2000, progress: bool | Callable = False) -> EvolutionResult:
    """Evolve R = len(seeds) independent runs for ``forward_passes`` children each.

    seed_models: [K, D] start models shared by all runs (None draws two random
        seeds per run, as the paper does from scratch).
    progress: True for a tqdm bar, or a callable(done_fp, total_fp, metrics).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    steps, steps_per_log = runner.plan_logging(forward_passes, config.children_per_step, log_every)
    batch = config.children_per_step
    eval_batch_size = eval_batch_size or runner.default_eval_batch_size(len(seeds) * batch)
    start = time.perf_counter()
    state = runner.init_runs(config, task, seeds, seed_models)
    first = jax.device_get(runner.archive_metrics(task, state.archive))
    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch_size)
    num_logs = steps // steps_per_log
    sizes = runner.chunk_sizes(num_logs, runner.logs_per_chunk_for(steps_per_log, batch, chunk_forward_passes))
    history = {k: [np.asarray(v)] for k, v in first.items()}
    bar = _progress_bar(progress, forward_passes, len(seeds))
    done = 0
    for size in sizes:
        state, logged = chunk(state, size)
        logged = jax.device_get(logged)
        for k, v in logged.items():
            history[k].extend(np.asarray(v))
        done += size * steps_per_log * batch
        if bar is not None:
            bar(done, forward_passes, {k: np.asarray(v[-1]) for k, v in logged.items()})
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    fps = [0] + [(i + 1) * steps_per_log * batch for i in range(num_logs)]
    metrics = {k: np.stack(v, axis=1) for k, v in history.items()}
    return EvolutionResult(config, task.name, seeds, fps, metrics, wall, state)


def _progress_bar(progress, total: int, runs: int):
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="fp", unit_scale=True, desc=f"evolving {runs} run(s)", dynamic_ncols=True)

    def update(done, _total, last):
        bar.update(done - bar.n)
        if "test_accuracy" in last:
            bar.set_postfix(test_acc=f"{np.mean(last['test_accuracy']):.3f}",
                            fps=f"{done * runs / max(bar.format_dict['elapsed'], 1e-9):.0f}/s")
        if done >= total:
            bar.close()

    return update
