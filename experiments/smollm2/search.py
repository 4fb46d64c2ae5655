"""Searches over merges of the SmolLM2 specialists, every one on recipes of the two seeds.

Every child any method proposes is a piecewise combination of the seed models
(:mod:`m2n2_jax.algorithm.recipes`), so all methods share one scorer that
materialises a recipe once and scores it, and one memo of scores per method
(a killed run re-proposes the same children, deterministic in the seed, and
finds their scores on disk: that is how a run resumes).

- M2N2 and its ablations, GA: the recipe archive (``recipes.RecipeM2N2``: no
  mutation, archive 15, a warm-up of random SLERP merges of the two seeds, split
  point and ratio drawn as in crossover), one child per step.
- MAP-Elites (``methods.recipe_map_elites``): a 4 x 4 grid over (math fitness
  accuracy, agent fitness score), quality = mean fitness score, parents by
  quality, M2N2's split-point SLERP.
Both run through the engine's one run function (:func:`m2n2_jax.engine.search.run_search`).
CMA-ES over per-layer SLERP coefficients is :mod:`m2n2_jax.methods.layer_cma`
(dense merges; the pipeline scores them through :meth:`Scorer.score_vector`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.search import ENGINE, Scorer as EngineScorer, run_search
from m2n2_jax.methods.recipe_map_elites import RecipeMapElites
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
        self.evaluations, self.fresh, self.seconds, self.times = 0, 0, 0.0, []
        self.best: list[tuple[float, int, str, object]] = []  # (mean score, -order, key, recipe or vector)

    def dense(self, recipe):
        # a fresh array per child, never a reused buffer: JAX may read a numpy array after jnp.asarray returns
        return self.layout.unravel(jnp.asarray(self.bank.materialise(recipe)))

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


def _run(strategy, scorer: Scorer, seed_scores, budget: int, seed: int):
    """One run of a recipe strategy through the engine's run function, one child per step."""
    out = run_search(strategy, None, EngineScorer(scorer, jittable=False), [seed], strategy.seeds(),
                     plan_budget(budget, 1, 1), seed_scores=jnp.asarray(seed_scores), keys=ENGINE)
    curve = [[int(fp), float(v)] for fp, v in zip(out.forward_passes[1:], out.metrics["best_train_score"][0, 1:])]
    return out.runs.state[0], curve


def run_m2n2(method: str, scorer: Scorer, seed_scores, budget: int, warmup: int, archive_size: int, seed: int):
    """M2N2 / ablation / GA on a recipe archive (``recipes.RecipeM2N2``): (best recipe, its scores, curve, info)."""
    config = method_config(method, mutation_std=0.0, archive_size=archive_size, children_per_step=1,
                           capacity_rule="archive-max")
    archive, curve = _run(recipes.RecipeM2N2(config, scorer.bank, warmup=warmup), scorer, seed_scores, budget, seed)
    best = archive.best_index
    memory = recipes.archive_memory(scorer.bank, archive)
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
    strategy = RecipeMapElites(scorer.bank, lambda scores: cell_of(scores, num_math), warmup,
                               method_config("m2n2", mutation_std=0.0, children_per_step=1))
    grid, curve = _run(strategy, scorer, seed_scores, budget, seed)
    recipe, _, scores = max(grid.cells.values(), key=lambda c: c[1])
    return recipe, scores, curve, {"inserted": grid.inserted, "occupied_cells": len(grid.cells),
                                   "segments": recipe.num_segments}
