"""Searches over merges of the SmolLM2 specialists, every one on recipes of the two seeds.

Every child any method proposes is a piecewise combination of the seed models
(:mod:`m2n2_jax.algorithm.recipes`), so all methods share one scorer that
materialises a recipe once and scores it, and one memo of scores per method
(a killed run re-proposes the same children, deterministic in the seed, and
finds their scores on disk: that is how a run resumes).

- M2N2 and its ablations, GA: the recipe archive (no mutation), archive 15,
  a warm-up of random SLERP merges of the two seeds (split point and ratio drawn
  as in crossover), then ``recipes.ask`` / ``tell``, one child per step.
- MAP-Elites: a 4 x 4 grid over (math fitness accuracy, agent fitness score),
  quality = mean fitness score, parents by quality, M2N2's split-point SLERP.
CMA-ES over per-layer SLERP coefficients is :mod:`m2n2_jax.methods.layer_cma`
(dense merges; the pipeline scores them through :meth:`Scorer.score_vector`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.methods.registry import method_config

GRID = 4


def recipe_key(recipe: recipes.Recipe) -> str:
    return hashlib.sha1(recipe.bounds.tobytes() + np.asarray(recipe.coeffs, np.float64).tobytes()).hexdigest()


class Memo:
    """Scores of proposed recipes, on disk as JSON (rewritten after every new entry; a few KB)."""

    def __init__(self, path: str | None):
        self.path, self.scores = path, {}
        if path and os.path.isfile(path):
            with open(path) as f:
                self.scores = {k: np.asarray(v, np.float32) for k, v in json.load(f).items()}

    def get(self, key):
        return self.scores.get(key)

    def put(self, key, scores) -> None:
        self.scores[key] = np.asarray(scores, np.float32)
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({k: v.tolist() for k, v in self.scores.items()}, f)
            os.replace(tmp, self.path)


class Scorer:
    """score(recipe) -> per-datapoint scores [N] (math first, then agent goals), memoised.

    ``score_params(params) -> [N]`` is the task's fitness; ``layout`` turns a flat vector into params.
    With ``keep`` > 0 it remembers the ``keep`` distinct children of highest mean score (ties: the one
    scored first), with what makes them (a recipe, or a dense vector): the candidates of :func:`pick`.
    """

    def __init__(self, bank: recipes.SeedBank, layout, score_params, memo: Memo | None = None, progress=None,
                 keep: int = 0):
        self.bank, self.layout, self.score_params = bank, layout, score_params
        self.memo, self.progress, self.keep = memo or Memo(None), progress, keep
        self.buffer = np.empty(bank.size, np.float32)
        self.evaluations, self.fresh, self.seconds, self.times = 0, 0, 0.0, []
        self.best: list[tuple[float, int, str, object]] = []  # (mean score, -order, key, recipe or vector)

    def dense(self, recipe):
        return self.layout.unravel(jnp.asarray(self.bank.materialise(recipe, self.buffer)))

    def __call__(self, recipe) -> np.ndarray:
        return self._scored(recipe_key(recipe), lambda: self.dense(recipe), recipe)

    def score_vector(self, x, payload=None) -> np.ndarray:
        """Scores of a dense flat vector (memoised by a hash of a strided sample of it). ``payload``: what a
        candidate keeps instead of the vector (e.g. a search's genome: kilobytes, not the model)."""
        x = np.asarray(x, np.float32)
        return self._scored(vector_key(x), lambda: self.layout.unravel(jnp.asarray(x)), x if payload is None else payload)

    def candidates(self) -> list[tuple[str, object, float]]:
        """(key, recipe or vector, mean score) of the remembered children, best first."""
        return [(key, payload, mean) for mean, _, key, payload in self.best]

    def _remember(self, key: str, scores, payload) -> None:
        if self.keep < 1 or any(k == key for _, _, k, _ in self.best):
            return
        self.best.append((float(np.mean(scores)), -self.evaluations, key, payload))
        self.best = sorted(self.best, key=lambda b: (b[0], b[1]), reverse=True)[:self.keep]

    def _scored(self, key: str, params, payload=None) -> np.ndarray:
        scores = self.memo.get(key)
        if scores is None:
            start = time.perf_counter()
            scores = np.asarray(self.score_params(params()), np.float32)
            self.times.append(time.perf_counter() - start)
            self.seconds += self.times[-1]
            self.fresh += 1
            self.memo.put(key, scores)
        self._remember(key, scores, payload)
        self.evaluations += 1
        if self.progress is not None:
            self.progress.update(1)
        return scores


def vector_key(x) -> str:
    """A hash of a flat vector (a strided sample and the float64 sum): names identical dense merges."""
    x = np.asarray(x, np.float32)
    return "v" + hashlib.sha1(x[::101].tobytes() + np.float64(np.sum(x, dtype=np.float64)).tobytes()).hexdigest()


def pick(candidates, selection: Scorer, decode=None) -> tuple[int, list[float]]:
    """(index of the reported child, selection mean score of each candidate): the candidate with the highest
    mean score on the selection split, ties to the earlier one (the higher fitness). A candidate is a recipe,
    a dense vector, or a genome that ``decode`` turns into a dense vector."""
    def scores(p):
        if isinstance(p, recipes.Recipe):
            return selection(p)
        return selection.score_vector(p if decode is None else decode(p))
    means = [float(np.mean(scores(p))) for _, p, _ in candidates]
    return int(np.argmax(means)), means


def warmup_child(config, key, bank) -> recipes.Recipe:
    """A random SLERP merge of the two seeds (split point and ratio drawn as crossover draws them)."""
    split, w = recipes.draw_split(key, bank.size, config.use_split_point)
    s0, s1 = (recipes.seed_recipe(k, bank.num_seeds, bank.size) for k in (0, 1))
    return recipes.crossover(bank, s0, s1, split, w, config.use_split_point, float(config.params().slerp_eps))


def run_m2n2(method: str, scorer: Scorer, seed_scores, budget: int, warmup: int, archive_size: int, seed: int):
    """M2N2 / ablation / GA on a recipe archive: (best recipe, its scores, curve, info)."""
    config = method_config(method, mutation_std=0.0, archive_size=archive_size, children_per_step=1,
                           capacity_rule="archive-max")
    bank = scorer.bank
    archive = recipes.init(config, bank, jnp.asarray(seed_scores))
    key = jax.random.PRNGKey(seed)
    curve = []
    while archive.evaluated < budget:
        key, sub = jax.random.split(key)
        if archive.evaluated < warmup:
            children = [warmup_child(config, sub, bank)]
        else:
            children = recipes.ask(config, sub, bank, archive)
        scores = np.stack([scorer(c) for c in children])
        archive = recipes.tell(config, archive, children, jnp.asarray(scores))
        curve.append([archive.evaluated, float(jnp.max(jnp.mean(archive.scores, axis=1)))])
    best = archive.best_index
    memory = recipes.archive_memory(bank, archive)
    return archive.recipes[best], np.asarray(archive.scores[best]), curve, {
        "inserted": archive.inserted, "segments": archive.recipes[best].num_segments,
        "archive_memory": {k: (float(v) if isinstance(v, float) else int(v)) for k, v in memory.items()},
        "config": config.to_dict()}


def cell_of(scores, num_math: int, bins: int = GRID) -> tuple[int, int]:
    """MAP-Elites cell of a model: bins of its math fitness accuracy and its mean agent fitness score."""
    def b(a):
        return int(min(max(int(np.floor(a * bins)), 0), bins - 1))
    return b(float(np.mean(scores[:num_math]))), b(float(np.mean(scores[num_math:])))


def run_map_elites(scorer: Scorer, seed_scores, num_math: int, budget: int, warmup: int, seed: int):
    """MAP-Elites (4 x 4, quality = mean fitness score) with M2N2's split-point SLERP crossover."""
    config = method_config("m2n2", mutation_std=0.0, children_per_step=1)
    bank = scorer.bank
    cells: dict = {}

    def offer(recipe, scores) -> bool:
        cell, quality = cell_of(scores, num_math), float(np.mean(scores))
        if cell not in cells or quality > cells[cell][1]:
            cells[cell] = (recipe, quality, scores)
            return True
        return False

    for k in range(bank.num_seeds):
        offer(recipes.seed_recipe(k, bank.num_seeds, bank.size), np.asarray(seed_scores[k]))
    rng_key, evaluated, inserted, curve = jax.random.PRNGKey(seed), 0, 0, []
    while evaluated < budget:
        rng_key, sub = jax.random.split(rng_key)
        if evaluated < warmup:
            child = warmup_child(config, sub, bank)
        else:
            k_parents, k_cross = jax.random.split(sub)
            occupied = sorted(cells)
            quality = np.asarray([cells[c][1] for c in occupied], np.float64)
            p = quality / quality.sum() if quality.sum() > 0 else np.full(len(occupied), 1 / len(occupied))
            replace = quality.sum() < 2 or len(occupied) < 2
            pick = np.asarray(jax.random.choice(k_parents, len(occupied), (2,), replace=bool(replace),
                                                p=jnp.asarray(p, jnp.float32)))
            x, y = cells[occupied[pick[0]]][0], cells[occupied[pick[1]]][0]
            split, w = recipes.draw_split(k_cross, bank.size, True)
            child = recipes.crossover(bank, x, y, split, w, True, float(config.params().slerp_eps))
        inserted += offer(child, scorer(child))
        evaluated += 1
        curve.append([evaluated, max(c[1] for c in cells.values())])
    best = max(cells.values(), key=lambda c: c[1])
    return best[0], best[2], curve, {"inserted": inserted, "occupied_cells": len(cells),
                                     "segments": best[0].num_segments}
