"""Brute-force reference line: the best of many SLERP ratios between two models.

Ratios t_i = i / (K - 1), i = 0..K-1 (t = 0 is model A, t = 1 is model B);
each merged model SLERP(A, B; t) is scored on the training set (one forward
pass each) and the first ratio with the highest training accuracy is kept.
The search is deterministic, so every run gives the same line. It runs as
:class:`SlerpSweep` through the one search loop (:func:`m2n2_jax.engine.search.run_search`);
:func:`search` scores the whole grid at once (the plain reference).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.engine.devices import evaluate
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult
from m2n2_jax.engine.search import Scorer, run_search
from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks.base import Task

RATIOS = 10_000
SWEEP_STEP = 200  # ratios scored per step of the sweep (the largest divisor of the budget up to this)


def ratio_grid(count: int) -> jax.Array:
    return jnp.linspace(0.0, 1.0, count, dtype=jnp.float32)


def search(task: Task, a, b, count: int = RATIOS, eval_batch_size: int = 4):
    """(ratios [K], training accuracies [K], best index) of SLERP(a, b; t) over the grid."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    ratios = ratio_grid(count)

    @jax.jit
    def accuracies(ts):
        cx, cy = xo.slerp_coefficients(a, b, ts)
        return evaluate(lambda c: jnp.mean(task.score_vector(c[0] * a + c[1] * b)),
                               jnp.stack([cx, cy], axis=1), eval_batch_size)

    acc = accuracies(ratios)
    return ratios, acc, jnp.argmax(acc)


@flax.struct.dataclass
class SweepState:
    """Where a SLERP sweep stands: the two models, the next ratio's index, the first best ratio and score."""

    a: jax.Array
    b: jax.Array
    next: jax.Array
    best_t: jax.Array
    best_score: jax.Array


@dataclasses.dataclass(frozen=True)
class SlerpSweep:
    """The brute-force line with the search interface (m2n2_jax.engine.search): each ask is
    SLERP(A, B; t) for the next ``per_step`` ratios of the grid of ``count`` (the first two seed
    models are A and B); the first ratio with the highest mean score is kept. No randomness."""

    count: int
    per_step: int

    def init(self, key, seeds, seed_scores, params=None) -> SweepState:
        return SweepState(a=seeds[0], b=seeds[1], next=jnp.int32(0), best_t=jnp.float32(0.0),
                          best_score=jnp.float32(-jnp.inf))

    def _children(self, state: SweepState, ts):
        cx, cy = xo.slerp_coefficients(state.a, state.b, ts)
        return cx[:, None] * state.a + cy[:, None] * state.b

    def ask(self, key, state: SweepState, params=None):
        ts = jax.lax.dynamic_slice(ratio_grid(self.count), (state.next,), (self.per_step,))
        return self._children(state, ts), state

    def tell(self, key, population, scores, state: SweepState, params=None):
        ts = jax.lax.dynamic_slice(ratio_grid(self.count), (state.next,), (self.per_step,))
        mean = jnp.mean(scores, axis=1)
        i = jnp.argmax(mean)  # the first best of this step; a later step must beat it strictly
        better = mean[i] > state.best_score
        return state.replace(next=state.next + self.per_step, best_t=jnp.where(better, ts[i], state.best_t),
                             best_score=jnp.where(better, mean[i], state.best_score)), {}

    def best(self, state: SweepState):
        return self._children(state, state.best_t[None])[0], state.best_score


def run_brute_force(task: Task, seeds: Sequence[int], forward_passes: int = RATIOS, *,
                    seed_models=None) -> RunResult:
    """Search ``forward_passes`` ratios between the two pre-trained models; a flat line per run
    of every metric the task reports for the best ratio's model."""
    if seed_models is None:
        raise ConfigError("brute-force searches SLERP ratios between two pre-trained models; pass --init pretrained.")
    seed_models = np.asarray(seed_models)
    if seed_models.shape[0] != 2:
        raise ConfigError(f"brute-force needs exactly two models (got {seed_models.shape[0]}).")
    if forward_passes < 2:
        raise ConfigError(f"brute-force needs at least 2 ratios (got a budget of {forward_passes}).")
    seeds = [int(s) for s in seeds] or [0]
    start = time.perf_counter()
    per_step = math.gcd(forward_passes, SWEEP_STEP)
    swept = run_search(SlerpSweep(forward_passes, per_step), None, Scorer(task.score_vector), [0], seed_models,
                       plan_budget(forward_passes, per_step, forward_passes), options=RunOptions(eval_batch_size=4))
    best_t, best_score = float(swept.runs.state.best_t[0]), float(swept.runs.state.best_score[0])
    merged = xo.slerp(jnp.asarray(seed_models[0]), jnp.asarray(seed_models[1]), best_t)
    reported = {k: float(v) for k, v in task.metrics(merged).items()}
    wall = time.perf_counter() - start
    runs = len(seeds)
    metrics = {k: np.full((runs, 2), v) for k, v in reported.items()}
    metrics["best_train_score"] = np.full((runs, 2), best_score)
    config = {"method": "brute-force", "ratios": forward_passes, "grid": "t_i = i / (K - 1), SLERP(A, B; t)",
              "note": "deterministic: every run is the same reference line"}
    return RunResult("brute-force", seeds, [0, forward_passes], metrics, wall, config,
                     np.tile(np.asarray(merged), (runs, 1)), extra={"best_ratio": round(best_t, 6)}, task=task.name)
