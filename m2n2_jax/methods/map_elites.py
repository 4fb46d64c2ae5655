"""MAP-Elites baseline: a 10 x 10 grid of elites over (odd-digit, even-digit) accuracy.

Follows the authors' procedure (SakanaAI/natural_niches, map_elites_fn.py).
Each cell keeps the model with the highest quality (training accuracy) among
the children whose descriptor falls in it. The descriptor of a model is its
training accuracy on the odd digits and on the even digits; an accuracy a
goes to bin min(floor(a * bins), bins - 1), so a = 1.0 lands in the last cell
(the authors' floor(10 a) = 10 falls off their grid and the child is lost).
Two parents are drawn from the occupied cells with probability proportional
to quality: with replacement while the qualities sum to less than 2, without
replacement from then on (so a child then has two distinct parents). The child
is made as M2N2 makes one: SLERP crossover of the first parent towards the
second at a random split point, then N(0, std^2) mutation (jax.random.normal
unless ``noise="hash"``; none when merging pre-trained models).

Key orders: "engine" splits each run's key into (next, child key) and the
child key into three (parents, crossover, mutation); "reference" splits it
into four as the authors' loop does (k1, k2, k3, next), which with B = 1
reproduces their curve child for child (tests/methods/test_map_elites_reference.py).
"""
from __future__ import annotations

import time
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.engine.devices import default_eval_batch_size, evaluate
from m2n2_jax.engine.runner import run_start
from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks.base import Task
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult, drive_steps
from m2n2_jax.engine.identity import run_identity

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


def quality_of(desc, labels) -> jax.Array:
    """Training accuracy from the descriptor, as the authors compute it (odd and even accuracies
    weighted by their counts), so that ties between elites are decided on the same float32 values."""
    odd = (labels % 2) == 1
    n_odd = jnp.sum(odd).astype(jnp.float32)
    n_even = jnp.sum(~odd).astype(jnp.float32)
    return (desc[0] * n_odd + desc[1] * n_even) / (n_odd + n_even)


def insert(state: GridState, child, scores, labels, bins: int = BINS) -> GridState:
    """Put a child with per-point scores [N] in its cell if the cell is empty or it beats the elite."""
    desc = descriptor(scores, labels)
    quality = quality_of(desc, labels)
    cell = cell_index(desc, bins)
    better = (~state.occupied[cell]) | (quality > state.quality[cell])
    return state.replace(
        params=state.params.at[cell].set(jnp.where(better, child, state.params[cell])),
        quality=state.quality.at[cell].set(jnp.where(better, quality, state.quality[cell])),
        occupied=state.occupied.at[cell].set(state.occupied[cell] | better),
        inserted=state.inserted + better.astype(jnp.int32))


def select_parents(key, state: GridState) -> jax.Array:
    """Cells [2] of the two parents, drawn from the occupied cells with probability proportional to
    quality; with replacement while the qualities sum to less than 2, without from then on.

    The draw is the one ``jax.random.choice(key, n, (2,), p, replace)`` makes over the n occupied
    cells in row-major order (the authors' call), written for a fixed grid size so it jits:
    inverse-CDF sampling with replacement, Gumbel top-2 without (a threefry draw of shape (C,)
    begins with the draw of shape (n,)). All qualities zero: uniform over the occupied cells.
    """
    cells = state.occupied.shape[0]
    order = jnp.argsort(~state.occupied, stable=True)  # occupied cells first, row-major
    n = jnp.sum(state.occupied)
    live = jnp.arange(cells) < n
    quality = jnp.where(live, state.quality[order], 0.0)
    total = jnp.sum(quality)
    weight = jnp.where(total > 0, quality, live.astype(jnp.float32))
    p = weight / jnp.sum(weight)
    cdf = jnp.cumsum(p)
    r = cdf[n - 1] * (1 - jax.random.uniform(key, (2,), p.dtype))
    with_replacement = jnp.minimum(jnp.searchsorted(cdf, r), n - 1)
    gumbel = jax.random.gumbel(key, (cells,), p.dtype) + jnp.log(p)
    without = jax.lax.top_k(jnp.where(live, gumbel, -jnp.inf), 2)[1]
    return order[jnp.where(total < 2, with_replacement, without)]


def make_child(state: GridState, keys, mutation_std: float, use_split_point: bool = True,
               noise: str = "threefry") -> jax.Array:
    """One child from keys [3] (parents, crossover, mutation): SLERP of the first parent towards
    the second at a random split point, then N(0, mutation_std^2) noise."""
    a, b = select_parents(keys[0], state)
    child = xo.crossover(keys[1], state.params[a], state.params[b], use_split_point)
    if mutation_std > 0:
        child = xo.mutate(keys[2], child, mutation_std, noise)
    return child


def child_keys(key, key_order: str = "engine"):
    """(next key, keys [3] for parents, crossover and mutation) of one run and step."""
    if key_order == "reference":
        k_parents, k_cross, k_mut, key = jax.random.split(key, 4)
        return key, jnp.stack([k_parents, k_cross, k_mut])
    key, sub = jax.random.split(key)
    return key, jax.random.split(sub, 3)


def init_run(task: Task, seed, seed_models=None, bins: int = BINS) -> GridState:
    """Grid of one run holding its seeds (two N(0, 0.01^2) draws as M2N2's, or the given models)."""
    key, seeds = run_start(task, seed, seed_models)
    state = empty_grid(task.num_params, key, bins, seeds.dtype)
    for i in range(seeds.shape[0]):
        state = insert(state, seeds[i], task.score_vector(seeds[i]), task.train_labels, bins)
    return state.replace(inserted=jnp.zeros((), jnp.int32))


def make_step(task: Task, mutation_std: float, eval_batch_size: int, bins: int = BINS,
              key_order: str = "engine", noise: str = "threefry"):
    labels = task.train_labels

    def step(states: GridState) -> GridState:
        next_keys, keys = jax.vmap(lambda k: child_keys(k, key_order))(states.key)
        children = jax.vmap(lambda s, k: make_child(s, k, mutation_std, noise=noise))(states, keys)
        scores = evaluate(task.score_vector, children, eval_batch_size)
        states = states.replace(key=next_keys)
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
                   options: RunOptions = RunOptions(), key_order: str = "engine",
                   noise: str = "threefry") -> RunResult:
    """R = len(seeds) MAP-Elites runs, one child per run and step, vmapped together.

    key_order "reference" follows the authors' key splits (and their threefry noise).
    """
    if key_order not in ("engine", "reference"):
        raise ConfigError(f"key_order must be 'engine' or 'reference' (got {key_order!r}).")
    if noise not in ("threefry", "hash"):
        raise ConfigError(f"noise must be 'threefry' or 'hash' (got {noise!r}).")
    if key_order == "reference" and noise != "threefry":
        raise ConfigError("--key-order reference draws mutation noise as the authors do (threefry); "
                          "drop --noise hash or use --key-order engine.")
    if task.train_labels is None:
        raise ConfigError(f"MAP-Elites needs class labels for its odd/even descriptors; task {task.name!r} "
                          "has no train_labels.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one run is needed; pass --runs 1 or more.")
    start = time.perf_counter()
    plan = plan_budget(forward_passes, 1, log_every)
    eval_batch_size = options.eval_batch_size or default_eval_batch_size(len(seeds))
    states = jax.jit(jax.vmap(lambda s: init_run(task, s, seed_models, bins)))(jnp.asarray(seeds, jnp.uint32))
    config = {"method": "map-elites", "grid": f"{bins}x{bins} over (odd-digit, even-digit) training accuracy",
              "quality": "training accuracy",
              "parents": "two occupied cells, probability proportional to quality; with replacement while "
                         "the qualities sum to less than 2, else without",
              "crossover": "SLERP with a random split point", "mutation_std": mutation_std,
              "noise": noise, "key_order": key_order,
              "init": "pretrained" if seed_models is not None else "scratch"}
    identity = run_identity(config, task, seeds, forward_passes, log_every, seed_models, options.identity_extra)
    step = make_step(task, mutation_std, eval_batch_size, bins, key_order, noise)
    out = drive_steps(states, step, make_log(task), plan, options, identity=identity, runs=len(seeds), start=start)
    best = np.asarray(jax.vmap(lambda s: s.params[s.best_index])(out.state))
    return RunResult("map-elites", seeds, out.forward_passes, out.metrics, out.wall_seconds, config, best,
                     task=task.name)
