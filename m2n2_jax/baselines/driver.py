"""A shared driver for the baselines: chunks of a jitted scan over log intervals.

A baseline is three pure functions over a batched state of R runs:
``step(state) -> state`` (one generation or step of every run, ``fp_per_step``
forward passes each), ``log(state) -> {name: [R]}`` (metrics of each run's
reported model) and an initial state. :func:`drive` advances them for a budget
and returns the same curves as :func:`m2n2_jax.evolve`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import numpy as np

from .. import runner
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


def make_chunk(step: Callable, log: Callable, steps_per_log: int):
    """jit(state, num_logs) -> (state, metrics [num_logs, R])."""

    def interval(state, _):
        state = jax.lax.fori_loop(0, steps_per_log, lambda _, s: step(s), state)
        return state, log(state)

    @functools.partial(jax.jit, static_argnums=1, donate_argnums=0)  # no second copy of the state
    def chunk(state, num_logs: int):
        return jax.lax.scan(interval, state, None, length=num_logs)

    return chunk


def drive(state, step: Callable, log: Callable, *, forward_passes: int, fp_per_step: int,
          log_every: int | None, progress=False, runs: int = 1, start: float | None = None,
          chunk_forward_passes: int = 2000):
    """(forward_passes [L], metrics {name: [R, L]}, wall seconds, final state)."""
    start = time.perf_counter() if start is None else start
    steps, steps_per_log = runner.plan_logging(forward_passes, fp_per_step, log_every)
    num_logs = steps // steps_per_log
    chunk = make_chunk(step, log, steps_per_log)
    sizes = runner.chunk_sizes(num_logs, runner.logs_per_chunk_for(steps_per_log, fp_per_step,
                                                                     chunk_forward_passes))
    history = {k: [np.asarray(v)] for k, v in jax.device_get(jax.jit(log)(state)).items()}
    bar = _progress_bar(progress, forward_passes, runs)
    done = 0
    for size in sizes:
        state, logged = chunk(state, size)
        logged = jax.device_get(logged)
        for k, v in logged.items():
            history[k].extend(np.asarray(v))
        done += size * steps_per_log * fp_per_step
        if bar is not None:
            bar(done, forward_passes, {k: np.asarray(v[-1]) for k, v in logged.items()})
    jax.block_until_ready(state)
    wall = time.perf_counter() - start
    fps = [0] + [(i + 1) * steps_per_log * fp_per_step for i in range(num_logs)]
    return fps, {k: np.stack(v, axis=1) for k, v in history.items()}, wall, state
