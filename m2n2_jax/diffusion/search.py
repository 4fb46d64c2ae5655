"""M2N2 with the paper's continuous scoring, for merges of pre-trained models.

The dense engine (strategy.py) competes raw scores with a fixed capacity.
For continuous scores the paper does two more things, done here:

- before fitness, each datapoint's worst score in the population is
  subtracted (so only improvements over the worst member count);
- the capacity c_j is the best (shifted) score any member reaches on j.

Both are computed over the archive members for parent selection, and over
the members plus the child for insertion. Empty slots are never parents and
are filled first. Crossover is the engine's, with parameter groups when the
config has them (:mod:`m2n2_jax.algorithm.groups`); there is no mutation (merging).
Runs are vmapped; a step draws B children per run from one snapshot,
evaluates all R * B together and inserts them one after another.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.groups import grouped_crossover


@flax.struct.dataclass
class Archive:
    """params [P, D], raw scores [P, N], filled [P] (slot holds a model), evaluated children."""

    params: jax.Array
    scores: jax.Array
    filled: jax.Array
    evaluated: jax.Array


def shifted_scores(scores, filled):
    """Scores minus each datapoint's worst score over the filled members (empty rows 0)."""
    worst = jnp.min(jnp.where(filled[:, None], scores, jnp.inf), axis=0)
    return jnp.where(filled[:, None], scores - worst, 0.0)


def niche_matrix(scores, filled, alpha):
    """F[i, j] of the paper's continuous rule: shifted scores, capacity = best shifted score."""
    shifted = shifted_scores(scores, filled)
    best = jnp.max(shifted, axis=0)
    capacity = jnp.where(best > 0, best, 1.0)
    return niches.niche_matrix(shifted, capacity, alpha)


def select_parents(key, archive: Archive, alpha, use_attraction: bool):
    """(a, b): a by fitness, b by attraction to a (or by fitness); only filled slots."""
    size = archive.filled.shape[0]
    F = niche_matrix(archive.scores, archive.filled, alpha)
    fitness = jnp.where(archive.filled, jnp.sum(F, axis=1), 0.0)
    uniform = archive.filled / jnp.sum(archive.filled)
    p_fit = niches.proportional_probs(fitness, uniform)
    k1, k2 = jax.random.split(key)
    if not use_attraction:
        b, a = jax.random.choice(k1, size, shape=(2,), p=p_fit)
        return a, b
    a = jax.random.choice(k1, size, p=p_fit)
    g = jnp.where(archive.filled, niches.attraction(F, a), 0.0)
    b = jax.random.choice(k2, size, p=niches.proportional_probs(g, p_fit))
    return a, b


def insert(archive: Archive, child, child_scores, alpha) -> Archive:
    """Put the child in the first empty slot, or in place of the least fit of members + child."""
    size = archive.filled.shape[0]
    valid = jnp.all(jnp.isfinite(child)) & jnp.all(jnp.isfinite(child_scores))
    child_scores = jnp.where(valid, child_scores, 0.0)
    scores = jnp.concatenate([archive.scores, child_scores[None]])
    filled = jnp.concatenate([archive.filled, jnp.ones((1,), bool)])
    fitness = jnp.where(filled, jnp.sum(niche_matrix(scores, filled, alpha), axis=1), -jnp.inf)
    worst = jnp.argmin(fitness)
    ok = valid & (worst < size)
    slot = jnp.minimum(worst, size - 1)
    return archive.replace(
        params=archive.params.at[slot].set(jnp.where(ok, child, archive.params[slot])),
        scores=archive.scores.at[slot].set(jnp.where(ok, child_scores, archive.scores[slot])),
        filled=archive.filled.at[slot].set(archive.filled[slot] | ok))


def make_child(config: M2N2Config, archive: Archive, key):
    k_sel, k_cross = jax.random.split(key)
    a, b = select_parents(k_sel, archive, config.alpha, config.use_attraction)
    x, y = archive.params[a], archive.params[b]
    eps = config.params().slerp_eps  # None in the config means the engine's default threshold
    if config.groups is not None:
        return grouped_crossover(k_cross, x, y, config.groups, config.use_split_point, eps)
    return xo.crossover(k_cross, x, y, config.use_split_point, eps)


def init_archive(config: M2N2Config, seeds, seed_scores) -> Archive:
    """Seeds [K, D] with their scores [K, N] in the first K slots."""
    k, d = seeds.shape
    if k > config.archive_size:
        raise ConfigError(f"{k} seed models do not fit an archive of {config.archive_size}; raise archive_size.")
    pad = config.archive_size - k
    return Archive(jnp.concatenate([seeds, jnp.zeros((pad, d), seeds.dtype)]),
                   jnp.concatenate([seed_scores, jnp.zeros((pad, seed_scores.shape[1]), jnp.float32)]),
                   jnp.arange(config.archive_size) < k, jnp.zeros((), jnp.int32))


def best_index(archive: Archive):
    """The filled member with the highest mean raw score (the reported model)."""
    return jnp.argmax(jnp.where(archive.filled, jnp.mean(archive.scores, axis=1), -jnp.inf))


def run(config: M2N2Config, score_fn: Callable, seeds, run_seeds: Sequence[int], forward_passes: int,
        log: Callable | None = None, log_points: int = 4):
    """(archives [R, ...], curve [(fp, mean best score over runs)]) after ``forward_passes`` children per run."""
    if config.mutation_std:
        raise ConfigError("this merge search does not mutate; set mutation_std=0.")
    batch = config.children_per_step
    if forward_passes < batch or forward_passes % batch:
        raise ConfigError(f"forward_passes ({forward_passes}) must be a positive multiple of children_per_step "
                          f"({batch}).")
    seeds = jnp.asarray(seeds)
    seed_scores = jax.lax.map(score_fn, seeds)
    runs = len(run_seeds)
    archives = jax.vmap(lambda _: init_archive(config, seeds, seed_scores))(jnp.arange(runs))
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in run_seeds])

    @jax.jit
    def step(archives, keys):
        split = jax.vmap(lambda k: jax.random.split(k, batch + 1))(keys)
        keys, child_keys = split[:, 0], split[:, 1:]
        children = jax.vmap(lambda a, ks: jax.vmap(lambda k: make_child(config, a, k))(ks))(archives, child_keys)
        flat = children.reshape((runs * batch,) + children.shape[2:])
        scores = jax.lax.map(score_fn, flat).reshape((runs, batch, -1))  # lax.map: vmapped weights are slow on CPU

        def tell(archive, cs, ss):
            archive, _ = jax.lax.scan(lambda a, c_s: (insert(a, c_s[0], c_s[1], config.alpha), None), archive, (cs, ss))
            return archive.replace(evaluated=archive.evaluated + batch)

        return jax.vmap(tell)(archives, children, scores), keys

    def best_mean(archives) -> float:
        best = jax.vmap(best_index)(archives)
        return float(jnp.mean(jnp.mean(archives.scores[jnp.arange(runs), best], axis=1)))

    steps = forward_passes // batch
    every = max(1, steps // log_points)
    curve, start = [(0, best_mean(archives))], time.perf_counter()
    for i in range(1, steps + 1):
        archives, keys = step(archives, keys)
        if i % every == 0 or i == steps:
            curve.append((i * batch, best_mean(archives)))
            if log:
                log(f"  {i * batch}/{forward_passes} forward passes per run, best training score "
                    f"{curve[-1][1]:.4f} ({time.perf_counter() - start:.0f}s)")
    return archives, curve


def best_vectors(archives: Archive) -> np.ndarray:
    """[R, D] each run's reported member."""
    best = np.asarray(jax.vmap(best_index)(archives))
    return np.asarray(archives.params)[np.arange(len(best)), best]
