"""MAP-Elites baseline: a 10 x 10 grid of elites over (odd-digit, even-digit) accuracy.

Each cell keeps the model with the highest quality (training accuracy) among
the children whose descriptor falls in it. The descriptor of a model is its
training accuracy on the odd digits and on the even digits; an accuracy a
goes to bin min(floor(a * bins), bins - 1), so a = 1.0 lands in the last cell.
A child is made as M2N2 makes one (SLERP crossover at a random split point,
then Gaussian mutation, none when merging pre-trained models) from two parents
drawn from the occupied cells with probability proportional to quality.
"""
from __future__ import annotations

import time
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import crossover as xo
from .. import runner
from ..runner import run_start
from ..errors import ConfigError
from ..tasks.base import Task
from ..budget import plan_budget
from ..chunk_loop import RunOptions, RunResult, baseline_identity, drive_steps

BINS = 10


@flax.struct.dataclass
class GridState:
    """The elites of one run: params [C, D], quality [C], occupied [C] (C = bins^2)."""

    params: jax.Array
    quality: jax.Array
    occupied: jax.Array
    key: jax.Array
    inserted: jax.Array

    @property
    def best_index(self) -> jax.Array:
        return jnp.argmax(jnp.where(self.occupied, self.quality, -jnp.inf))


def bin_index(accuracy, bins: int = BINS) -> jax.Array:
    """Bin of an accuracy in [0, 1]; exactly 1.0 goes to the last bin."""
    return jnp.clip(jnp.floor(accuracy * bins).astype(jnp.int32), 0, bins - 1)


def descriptor(scores, labels) -> jax.Array:
    """(accuracy on odd-labelled points, accuracy on even-labelled points) from per-point scores [N]."""
    odd = (labels % 2) == 1
    acc_odd = jnp.sum(jnp.where(odd, scores, 0)) / jnp.maximum(jnp.sum(odd), 1)
    acc_even = jnp.sum(jnp.where(odd, 0, scores)) / jnp.maximum(jnp.sum(~odd), 1)
    return jnp.stack([acc_odd, acc_even])


def cell_index(desc, bins: int = BINS) -> jax.Array:
    """Flat cell of a descriptor: row = odd-digit bin, column = even-digit bin."""
    return bin_index(desc[0], bins) * bins + bin_index(desc[1], bins)


def empty_grid(num_params: int, key, bins: int = BINS, dtype=jnp.float32) -> GridState:
    cells = bins * bins
    return GridState(params=jnp.zeros((cells, num_params), dtype), quality=jnp.zeros((cells,), jnp.float32),
                     occupied=jnp.zeros((cells,), bool), key=key, inserted=jnp.zeros((), jnp.int32))


def insert(state: GridState, child, scores, labels, bins: int = BINS) -> GridState:
    """Put a child with per-point scores [N] in its cell if the cell is empty or it beats the elite."""
    quality = jnp.mean(scores)
    cell = cell_index(descriptor(scores, labels), bins)
    better = (~state.occupied[cell]) | (quality > state.quality[cell])
    return state.replace(
        params=state.params.at[cell].set(jnp.where(better, child, state.params[cell])),
        quality=state.quality.at[cell].set(jnp.where(better, quality, state.quality[cell])),
        occupied=state.occupied.at[cell].set(state.occupied[cell] | better),
        inserted=state.inserted + better.astype(jnp.int32))


def select_parents(key, state: GridState):
    """Two occupied cells drawn independently with probability proportional to quality."""
    weight = jnp.where(state.occupied, state.quality, 0.0)
    uniform = state.occupied.astype(jnp.float32)
    p = jnp.where(jnp.sum(weight) > 0, weight, uniform)
    return jax.random.choice(key, p.shape[0], (2,), p=p / jnp.sum(p))


def make_child(state: GridState, key, mutation_std: float, use_split_point: bool = True):
    k_parents, k_cross, k_mut = jax.random.split(key, 3)
    a, b = select_parents(k_parents, state)
    child = xo.crossover(k_cross, state.params[a], state.params[b], use_split_point)
    if mutation_std > 0:
        child = xo.mutate(k_mut, child, mutation_std, "hash")
    return child


def init_run(task: Task, seed, seed_models=None, bins: int = BINS) -> GridState:
    """Grid of one run holding its seeds (two N(0, 0.01^2) draws as M2N2's, or the given models)."""
    key, seeds = run_start(task, seed, seed_models)
    state = empty_grid(task.num_params, key, bins, seeds.dtype)
    for i in range(seeds.shape[0]):
        state = insert(state, seeds[i], task.score_vector(seeds[i]), task.train_labels, bins)
    return state.replace(inserted=jnp.zeros((), jnp.int32))


def make_step(task: Task, mutation_std: float, eval_batch_size: int, bins: int = BINS):
    labels = task.train_labels

    def step(states: GridState) -> GridState:
        keys = jax.vmap(jax.random.split)(states.key)  # [R, 2]
        children = jax.vmap(lambda s, k: make_child(s, k, mutation_std))(states, keys[:, 1])
        scores = runner.evaluate(task.score_vector, children, eval_batch_size)
        states = states.replace(key=keys[:, 0])
        return jax.vmap(lambda s, c, sc: insert(s, c, sc, labels, bins))(states, children, scores)

    return step


def make_log(task: Task):
    def one(s: GridState):
        best = s.best_index
        return {**task.metrics(s.params[best]), "best_train_score": s.quality[best],
                "occupied_cells": jnp.sum(s.occupied), "inserted": s.inserted}

    return lambda states: jax.vmap(one)(states)


def run_map_elites(task: Task, seeds: Sequence[int], forward_passes: int, *, mutation_std: float = 0.01,
                   seed_models=None, log_every: int | None = None, bins: int = BINS,
                   options: RunOptions = RunOptions()) -> RunResult:
    """R = len(seeds) MAP-Elites runs, one child per run and step, vmapped together."""
    if task.train_labels is None:
        raise ConfigError(f"MAP-Elites needs class labels for its odd/even descriptors; task {task.name!r} "
                          "has no train_labels.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    start = time.perf_counter()
    plan = plan_budget(forward_passes, 1, log_every)
    eval_batch_size = options.eval_batch_size or runner.default_eval_batch_size(len(seeds))
    states = jax.jit(jax.vmap(lambda s: init_run(task, s, seed_models, bins)))(jnp.asarray(seeds, jnp.uint32))
    config = {"method": "map-elites", "grid": f"{bins}x{bins} over (odd-digit, even-digit) training accuracy",
              "quality": "training accuracy", "parents": "two occupied cells, probability proportional to quality",
              "crossover": "SLERP with a random split point", "mutation_std": mutation_std,
              "init": "pretrained" if seed_models is not None else "scratch"}
    identity = baseline_identity(config, task, seeds, forward_passes, log_every, options.identity_extra)
    out = drive_steps(states, make_step(task, mutation_std, eval_batch_size, bins), make_log(task), plan, options,
                      identity=identity, runs=len(seeds), start=start)
    best = np.asarray(jax.vmap(lambda s: s.params[s.best_index])(out.state))
    return RunResult("map-elites", seeds, out.forward_passes, out.metrics, out.wall_seconds, config, best,
                     task=task.name)
