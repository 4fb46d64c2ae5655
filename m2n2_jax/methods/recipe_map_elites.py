"""MAP-Elites over recipes, with the search interface: a host strategy for merges of large models.

The archive is a grid of cells, each holding its elite (a recipe of the seed models,
:mod:`m2n2_jax.algorithm.recipes`), the elite's quality (its mean score) and scores.
``descriptor(scores [N]) -> cell`` places a model (any hashable cell, e.g. a pair of bins).
A child is made from two parents drawn from the occupied cells (in sorted order) with
probability proportional to quality (uniform while all qualities are zero; with replacement
while the qualities sum to less than 2 or one cell is occupied): SLERP of the first towards the
second at a random split point, as M2N2's crossover. The first ``warmup`` children are random
SLERP merges of seeds 0 and 1. One child per step; the step's key is split into (parents,
crossover). It runs through :func:`m2n2_jax.engine.search.run_search` (a host strategy).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.algorithm.config import M2N2Config


@dataclasses.dataclass(frozen=True)
class Grid:
    """The elites of one run: {cell: (recipe, quality, scores)}, children told, children that entered."""

    cells: dict
    evaluated: int = 0
    inserted: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class RecipeMapElites:
    """MAP-Elites on recipes of ``bank``'s seeds; see the module docstring. ``params`` are unused."""

    bank: recipes.SeedBank
    descriptor: Callable
    warmup: int = 0
    config: M2N2Config = M2N2Config(mutation_std=0.0)  # the SLERP threshold and split-point switch
    on_host = True

    def seeds(self) -> list:
        return [recipes.seed_recipe(k, self.bank.num_seeds, self.bank.size) for k in range(self.bank.num_seeds)]

    def _offer(self, grid: Grid, recipe, scores) -> tuple[Grid, bool]:
        cells, scores = dict(grid.cells), np.asarray(scores)
        cell, quality = self.descriptor(scores), float(np.mean(scores))
        better = cell not in cells or quality > cells[cell][1]
        if better:
            cells[cell] = (recipe, quality, scores)
        return Grid(cells, grid.evaluated, grid.inserted), better

    def init(self, key, seeds, seed_scores, params=None) -> Grid:
        grid = Grid({})
        for recipe, scores in zip(seeds, seed_scores):
            grid, _ = self._offer(grid, recipe, scores)
        return grid

    def ask(self, key, grid: Grid, params=None):
        if grid.evaluated < self.warmup:
            return [recipes.random_slerp(self.config, key, self.bank)], grid
        k_parents, k_cross = jax.random.split(key)
        occupied = sorted(grid.cells)
        quality = np.asarray([grid.cells[c][1] for c in occupied], np.float64)
        p = quality / quality.sum() if quality.sum() > 0 else np.full(len(occupied), 1 / len(occupied))
        replace = quality.sum() < 2 or len(occupied) < 2
        pick = np.asarray(jax.random.choice(k_parents, len(occupied), (2,), replace=bool(replace),
                                            p=jnp.asarray(p, jnp.float32)))
        x, y = grid.cells[occupied[pick[0]]][0], grid.cells[occupied[pick[1]]][0]
        split, w = recipes.draw_split(k_cross, self.bank.size, True)
        return [recipes.crossover(self.bank, x, y, split, w, True, float(self.config.params().slerp_eps))], grid

    def tell(self, key, population, scores, grid: Grid, params=None):
        inserted = grid.inserted
        for child, child_scores in zip(population, np.asarray(scores)):
            grid, better = self._offer(grid, child, child_scores)
            inserted += better
        return Grid(grid.cells, grid.evaluated + len(population), inserted), {}

    def best(self, grid: Grid):
        """(recipe, quality) of the best elite."""
        recipe, quality, _ = max(grid.cells.values(), key=lambda c: c[1])
        return recipe, quality

    def logged(self, grid: Grid) -> dict:
        return {"occupied_cells": len(grid.cells), "inserted": grid.inserted}
