"""A shared driver for the baselines: chunks of a jitted scan over log intervals.

A baseline is three pure functions over a batched state of R runs:
``step(state) -> state`` (one generation or step of every run, ``fp_per_step``
forward passes each), ``log(state) -> {name: [R]}`` (metrics of each run's
reported model) and an initial state. :func:`drive` advances them for a budget
and returns the same curves as :func:`m2n2_jax.evolve`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from .. import runner
from ..chunk_loop import Checkpointing, restore, run_chunks
from ..evolution import _progress_bar


@dataclasses.dataclass
class BaselineResult:
    """Curves of R runs (``metrics[name]`` is [R, L] at ``forward_passes`` [L])."""

    method: str
    seeds: list[int]
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float
    config: dict
    best: np.ndarray  # [R, D] each run's reported model
    extra: dict = dataclasses.field(default_factory=dict)

    def best_vectors(self) -> np.ndarray:
        return self.best


def baseline_identity(config: dict, task, seeds, forward_passes: int, log_every: int | None,
                      extra: dict | None = None) -> dict:
    """What a baseline's checkpoint must agree on to be resumed (JSON-serialisable)."""
    return {"config": config, "task": task.name, "seeds": [int(s) for s in seeds],
            "forward_passes": int(forward_passes), "log_every": log_every, **(extra or {})}


def make_chunk(step: Callable, log: Callable, steps_per_log: int, donate: bool = True):
    """jit(state, num_logs) -> (state, metrics [num_logs, R]).

    donate: reuse the input state's memory (no second copy of a large state);
    off when checkpointing, which may still need the state a chunk was given.
    """

    def interval(state, _):
        state = jax.lax.fori_loop(0, steps_per_log, lambda _, s: step(s), state)
        return state, log(state)

    def chunk(state, num_logs: int):
        return jax.lax.scan(interval, state, None, length=num_logs)

    return jax.jit(chunk, static_argnums=1, donate_argnums=0 if donate else ())


def drive(state, step: Callable, log: Callable, *, forward_passes: int, fp_per_step: int,
          log_every: int | None, progress=False, runs: int = 1, start: float | None = None,
          chunk_forward_passes: int = 2000, checkpointing: Checkpointing = Checkpointing(),
          identity: dict | None = None, step_offset: int = 0, extra_meta: dict | None = None):
    """(forward_passes [L], metrics {name: [R, L]}, wall seconds, final state).

    With ``checkpointing.directory`` the state and curves are saved as the
    engine saves them (see chunk_loop); ``checkpointing.resume`` continues from
    the newest good checkpoint, refusing one whose ``identity`` differs.
    step_offset, extra_meta: see chunk_loop.run_chunks.
    """
    start = time.perf_counter() if start is None else start
    checkpointing = checkpointing.checked()
    steps, steps_per_log = runner.plan_logging(forward_passes, fp_per_step, log_every)
    if checkpointing.every is not None:
        chunk_forward_passes = min(chunk_forward_passes, checkpointing.every)
    num_logs = steps // steps_per_log
    fp_per_log = steps_per_log * fp_per_step
    chunk = make_chunk(step, log, steps_per_log, donate=checkpointing.directory is None)
    sizes = runner.chunk_sizes(num_logs, runner.logs_per_chunk_for(steps_per_log, fp_per_step,
                                                                     chunk_forward_passes))
    history = {k: [np.asarray(v)] for k, v in jax.device_get(jax.jit(log)(state)).items()}
    done_logs, elapsed_before = 0, 0.0
    if checkpointing.resume:
        state, history, done_logs, elapsed_before = restore(checkpointing.directory, state, identity or {})
    bar = _progress_bar(progress, forward_passes, runs, done_logs * fp_per_log)
    state, wall = run_chunks(chunk, state, history, num_logs=num_logs, sizes=sizes, fp_per_log=fp_per_log,
                             forward_passes=forward_passes, bar=bar, checkpointing=checkpointing,
                             identity=identity or {}, done_logs=done_logs, elapsed_before=elapsed_before,
                             start=start, step_offset=step_offset, extra_meta=extra_meta)
    fps = [i * fp_per_log for i in range(num_logs + 1)]
    return fps, {k: np.stack(v, axis=1) for k, v in history.items()}, wall, state
