"""An M2N2 archive that stores recipes instead of dense models.

Without mutation every archive member is a piecewise combination of the K seed
models: on each segment [b_i, b_{i+1}) of the flat index space it equals
sum_k C[i, k] * seed_k. SLERP crossover with a split point keeps that form:

- the SLERP angle needs |x|^2, |y|^2 and x.y of the whole parents. On a
  common refinement of their segments, x.y = sum_i C_x[i]^T G_i C_y[i] where
  G_i is the K x K Gram matrix of the seeds restricted to segment i. G over
  [a, b) is P(b) - P(a) with P(p) = sum_{d<p} s_d s_d^T, a prefix sum stored
  every ``block`` coordinates and completed from the seeds on demand, so no
  dense member is ever formed;
- the child on each segment is cx(t) C_x + cy(t) C_y, with t = w before the
  split and 1 - w from it on: the union of both parents' segments plus the
  split point, again a recipe.

A member is materialised (one working copy) only to be evaluated. Parent
selection, the split point and the mixing ratio use the same keys and code as
:mod:`m2n2_jax.algorithm.strategy`, so a recipe run reproduces a dense run (mutation 0)
up to float rounding. Everything here is host-side numpy (float64 for the
coefficients), a thin layer around the jitted niche functions.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches
from m2n2_jax.algorithm import strategy
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.errors import ConfigError, SeedModelError


@dataclasses.dataclass(frozen=True, eq=False)
class Recipe:
    """bounds [m + 1] (0 = b_0 < ... < b_m = D) and coeffs [m, K]."""

    bounds: np.ndarray
    coeffs: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.bounds.nbytes + self.coeffs.nbytes

    @property
    def num_segments(self) -> int:
        return self.coeffs.shape[0]


def seed_recipe(k: int, num_seeds: int, size: int) -> Recipe:
    """Seed model k itself."""
    return Recipe(np.array([0, size], np.int64), np.eye(num_seeds)[k:k + 1].copy())


def zero_recipe(num_seeds: int, size: int) -> Recipe:
    """The all-zero vector of an empty archive slot."""
    return Recipe(np.array([0, size], np.int64), np.zeros((1, num_seeds)))


def refine(recipe: Recipe, bounds: np.ndarray) -> np.ndarray:
    """Coefficients [len(bounds) - 1, K] of ``recipe`` on a finer partition ``bounds``."""
    segment = np.searchsorted(recipe.bounds, bounds[:-1], side="right") - 1
    return recipe.coeffs[segment]


def simplify(bounds: np.ndarray, coeffs: np.ndarray) -> Recipe:
    """Merge neighbouring segments with equal coefficients."""
    keep = np.ones(coeffs.shape[0], bool)
    keep[1:] = np.any(coeffs[1:] != coeffs[:-1], axis=1)
    return Recipe(np.append(bounds[:-1][keep], bounds[-1]), coeffs[keep])


@dataclasses.dataclass(frozen=True, eq=False)
class SeedBank:
    """The K seed models [K, D] (float32, host) and block prefix sums of their Gram matrix.

    prefix[j] = sum over d < j * block of s_d s_d^T (float64), so the Gram of
    any interval costs at most two partial blocks of work.
    """

    seeds: np.ndarray
    block: int
    prefix: np.ndarray

    @classmethod
    def build(cls, seeds, block: int = 1 << 16) -> "SeedBank":
        seeds = np.asarray(seeds, np.float32)
        if seeds.ndim != 2 or seeds.shape[0] < 2:
            raise SeedModelError(f"seeds must be an array [K, D] with K >= 2 (got shape {seeds.shape}).")
        num_blocks = -(-seeds.shape[1] // block)
        prefix = np.zeros((num_blocks + 1, seeds.shape[0], seeds.shape[0]))
        for j in range(num_blocks):
            part = seeds[:, j * block:(j + 1) * block].astype(np.float64)
            prefix[j + 1] = prefix[j] + part @ part.T
        return cls(seeds, block, prefix)

    @property
    def num_seeds(self) -> int:
        return self.seeds.shape[0]

    @property
    def size(self) -> int:
        return self.seeds.shape[1]

    @property
    def nbytes(self) -> int:
        return self.seeds.nbytes + self.prefix.nbytes

    def prefix_gram(self, p: int) -> np.ndarray:
        j = p // self.block
        part = self.seeds[:, j * self.block:p].astype(np.float64)
        return self.prefix[j] + part @ part.T

    def grams(self, bounds: np.ndarray) -> np.ndarray:
        """Gram matrices [m, K, K] of the seeds on each segment of ``bounds``."""
        prefixes = np.stack([self.prefix_gram(int(p)) for p in bounds])
        return prefixes[1:] - prefixes[:-1]

    def materialise(self, recipe: Recipe, out: np.ndarray | None = None, chunk: int = 1 << 20) -> np.ndarray:
        """The dense vector [D] (float32) of ``recipe``, written into ``out`` chunk by chunk."""
        out = np.empty(self.size, np.float32) if out is None else out
        for (a, b), c in zip(zip(recipe.bounds[:-1], recipe.bounds[1:]), recipe.coeffs):
            for lo in range(int(a), int(b), chunk):
                hi = min(int(b), lo + chunk)
                np.multiply(self.seeds[0, lo:hi], np.float32(c[0]), out=out[lo:hi])
                for k in range(1, self.num_seeds):
                    out[lo:hi] += np.float32(c[k]) * self.seeds[k, lo:hi]
        return out


def inner_products(bank: SeedBank, x: Recipe, y: Recipe):
    """(x.x, y.y, x.y) of two recipes without materialising them."""
    bounds = np.union1d(x.bounds, y.bounds)
    grams = bank.grams(bounds)
    cx, cy = refine(x, bounds), refine(y, bounds)
    dot = lambda a, b: float(np.einsum("mk,mkl,ml->", a, grams, b))
    return dot(cx, cx), dot(cy, cy), dot(cx, cy)


def slerp_coefficients(xx: float, yy: float, xy: float, t, eps: float = xo.SLERP_EPS, reference: bool = False):
    """(cx, cy) with SLERP(x, y; t) = cx x + cy y, from the inner products, with the
    degenerate cases of :func:`m2n2_jax.algorithm.crossover.slerp_coefficients`."""
    t = np.asarray(t, np.float64)
    cos = np.clip(xy / (np.sqrt(xx) * np.sqrt(yy)), -1, 1) if xx > 0 and yy > 0 else np.nan
    omega = np.arccos(cos)
    sin = np.sin(omega)
    if np.isfinite(sin) and sin > eps:
        return np.sin((1 - t) * omega) / sin, np.sin(t * omega) / sin
    if not reference and cos < 0:  # antiparallel: the nearer parent
        to_y = (t > 0.5).astype(np.float64)
        return 1 - to_y, to_y
    return 1 - t, t


def crossover(bank: SeedBank, x: Recipe, y: Recipe, split: int, w: float, use_split_point: bool = True,
              eps: float = xo.SLERP_EPS, reference: bool = False) -> Recipe:
    """The recipe of SLERP(x, y) with t = w before ``split`` and 1 - w from it on."""
    xx, yy, xy = inner_products(bank, x, y)
    if not use_split_point:
        cx, cy = slerp_coefficients(xx, yy, xy, w, eps, reference)
        bounds = np.union1d(x.bounds, y.bounds)
        return simplify(bounds, cx * refine(x, bounds) + cy * refine(y, bounds))
    cx, cy = slerp_coefficients(xx, yy, xy, np.array([w, 1 - w]), eps, reference)
    bounds = np.union1d(np.union1d(x.bounds, y.bounds), [split])
    before = bounds[1:] <= split
    coeffs = (np.where(before, cx[0], cx[1])[:, None] * refine(x, bounds)
              + np.where(before, cy[0], cy[1])[:, None] * refine(y, bounds))
    return simplify(bounds, coeffs)


@dataclasses.dataclass(frozen=True, eq=False)
class RecipeArchive:
    """The archive of one run: P recipes, their scores [P, N] and which slots are filled [P] (as ArchiveState).

    An empty slot holds the zero recipe with zero scores; it is never drawn as a
    parent nor reported, and is the first to be replaced.
    """

    recipes: tuple
    scores: jax.Array
    capacity: jax.Array
    evaluated: int = 0
    inserted: int = 0
    filled: jax.Array | None = None  # [P] bool; None: every slot holds a member

    @property
    def members(self) -> jax.Array:
        return jnp.ones(len(self.recipes), bool) if self.filled is None else jnp.asarray(self.filled, bool)

    @property
    def best_index(self) -> int:
        """The filled member with the highest mean score (the lowest slot on ties)."""
        return int(strategy.best_filled(self.scores, self.members))

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.recipes) + self.scores.nbytes


def check_config(config: M2N2Config) -> None:
    if config.mutation_std != 0:
        raise ConfigError(
            f"a recipe archive needs mutation_std = 0 (got {config.mutation_std}): mutated children are not "
            "combinations of the seeds. Set mutation_std=0, as for merging pre-trained models.")
    if config.subtract_worst:
        raise ConfigError("subtract_worst is implemented by the dense archive only; use --archive dense (or "
                          "subtract_worst=False) for a recipe archive.")


def init(config: M2N2Config, bank: SeedBank, seed_scores, capacity=None) -> RecipeArchive:
    """Archive holding the K seeds (inserted in order into an empty archive, as the dense strategy).

    The capacity follows ``config.capacity_rule`` as in the dense engine (the
    config alone holds it; a given ``capacity`` needs ``config.for_capacity``):
    under "archive-max" c_j is the best score any archive member (or the
    candidate being inserted) reaches on datapoint j
    (:func:`m2n2_jax.algorithm.niches.archive_capacity`, the paper's rule for
    continuous scores); otherwise ``capacity`` (default 1).
    """
    check_config(config)
    strategy.check_capacity_rule(config, capacity)
    num_points = strategy.check_scores(seed_scores, bank.num_seeds, None).shape[1]
    capacity = jnp.ones((num_points,), jnp.float32) if capacity is None else jnp.asarray(capacity, jnp.float32)
    empty = zero_recipe(bank.num_seeds, bank.size)
    archive = RecipeArchive((empty,) * config.archive_size, jnp.zeros((config.archive_size, num_points)), capacity,
                            filled=jnp.zeros(config.archive_size, bool))
    seeds = [seed_recipe(k, bank.num_seeds, bank.size) for k in range(bank.num_seeds)]
    return dataclasses.replace(tell(config, archive, seeds, seed_scores), evaluated=0)


_select = jax.jit(niches.select_parents, static_argnames=("use_attraction", "reference"))
_insert = jax.jit(niches.insert, static_argnames=("adaptive_capacity",))


def draw_split(key, size: int, use_split_point: bool):
    """(split, w) from a crossover key, exactly as :func:`m2n2_jax.algorithm.crossover.crossover` draws them."""
    if use_split_point:
        k_split, k_w = jax.random.split(key)
        return int(jax.random.randint(k_split, (), 0, size)), float(jax.random.uniform(k_w))
    return size, float(jax.random.uniform(key))


def make_child(config: M2N2Config, bank: SeedBank, archive: RecipeArchive, keys) -> Recipe:
    a, b = _select(keys[0], archive.scores, archive.capacity, config.alpha,
                   use_attraction=config.use_attraction, reference=config.key_order == "reference",
                   filled=archive.members)
    x, y = archive.recipes[int(a)], archive.recipes[int(b)]
    if not config.use_crossover:
        return x
    split, w = draw_split(keys[1], bank.size, config.use_split_point)
    eps = float(config.params().slerp_eps)
    return crossover(bank, x, y, split, w, config.use_split_point, eps, config.reference)


def ask(config: M2N2Config, key, bank: SeedBank, archive: RecipeArchive) -> list[Recipe]:
    """B children (recipes) from one archive snapshot, with the dense strategy's engine key order."""
    check_config(config)
    keys = strategy.child_keys(key, config.children_per_step)
    return [make_child(config, bank, archive, keys[i]) for i in range(config.children_per_step)]


def tell(config: M2N2Config, archive: RecipeArchive, children, scores) -> RecipeArchive:
    """Insert evaluated recipes one after another (niches.insert decides the slot)."""
    adaptive = config.capacity_rule_for(jnp.asarray(scores).dtype) == "archive-max"
    scores = strategy.check_scores(scores, len(children), archive.scores.shape[1])
    recipes, archive_scores, inserted = list(archive.recipes), archive.scores, archive.inserted
    filled = np.asarray(archive.members).copy()
    slots = jnp.arange(len(recipes), dtype=jnp.float32)[:, None]
    capacity = archive.capacity
    for child, child_scores in zip(children, scores):
        finite = jnp.asarray([0.0 if np.all(np.isfinite(child.coeffs)) else np.nan])
        _, archive_scores, ok, slot = _insert(slots, archive_scores, finite, child_scores,
                                              capacity, config.alpha, adaptive, filled=filled)
        if bool(ok):
            recipes[int(slot)] = child
            filled[int(slot)] = True
            inserted += 1
    if adaptive:
        capacity = niches.archive_capacity(archive_scores)
    return RecipeArchive(tuple(recipes), archive_scores, capacity,
                         archive.evaluated + len(children), inserted, jnp.asarray(filled))


def random_slerp(config: M2N2Config, key, bank: SeedBank) -> Recipe:
    """A random SLERP merge of seeds 0 and 1 (split point and ratio drawn as crossover draws them)."""
    split, w = draw_split(key, bank.size, config.use_split_point)
    s0, s1 = (seed_recipe(k, bank.num_seeds, bank.size) for k in (0, 1))
    return crossover(bank, s0, s1, split, w, config.use_split_point, float(config.params().slerp_eps))


@dataclasses.dataclass(frozen=True, eq=False)
class RecipeM2N2:
    """M2N2 on a recipe archive with the search interface (:mod:`m2n2_jax.engine.search`).

    A host strategy (``on_host``): its state is a :class:`RecipeArchive`, its population a
    list of recipes, so its scorer takes a recipe. ``capacity``: [N] given c_j (None: 1);
    the capacity rule is the config's. ``warmup``: the first ``warmup`` children are random
    SLERP merges of seeds 0 and 1 (:func:`random_slerp`, one per step) instead of M2N2 children.
    ``params`` are unused (the numeric settings are the config's).
    """

    config: M2N2Config
    bank: SeedBank
    capacity: jax.Array | None = None
    warmup: int = 0
    on_host = True

    def __post_init__(self):
        check_config(self.config)
        if self.warmup and self.config.children_per_step != 1:
            raise ConfigError(f"a warm-up draws one child per step; set children_per_step=1 (got "
                              f"{self.config.children_per_step}) or warmup=0.")
        object.__setattr__(self, "config", self.config.for_capacity(self.capacity))

    def seeds(self) -> list[Recipe]:
        """The K seed models as recipes (what ``init`` is given)."""
        return [seed_recipe(k, self.bank.num_seeds, self.bank.size) for k in range(self.bank.num_seeds)]

    def init(self, key, seeds, seed_scores, params=None) -> RecipeArchive:
        return init(self.config, self.bank, seed_scores, self.capacity)

    def ask(self, key, state: RecipeArchive, params=None):
        if state.evaluated < self.warmup:
            return [random_slerp(self.config, key, self.bank)], state
        return ask(self.config, key, self.bank, state), state

    def tell(self, key, population, scores, state: RecipeArchive, params=None):
        return tell(self.config, state, population, scores), {}

    def best(self, state: RecipeArchive):
        """(recipe, its mean score) of the member a run reports."""
        best = state.best_index
        return state.recipes[best], float(jnp.mean(state.scores[best]))

    def logged(self, state: RecipeArchive) -> dict:
        return {"inserted": state.inserted}


def archive_memory(bank: SeedBank, archive: RecipeArchive, working_copies: int = 1) -> dict:
    """Bytes held by a recipe archive (seeds, prefix Grams, recipes, working copies)
    against the same archive stored densely."""
    dense_model = bank.size * bank.seeds.dtype.itemsize
    recipe_total = bank.nbytes + archive.nbytes + working_copies * dense_model
    return {"dense_model_bytes": dense_model,
            "dense_archive_bytes": len(archive.recipes) * dense_model + archive.scores.nbytes,
            "seed_bytes": bank.seeds.nbytes, "prefix_gram_bytes": bank.prefix.nbytes,
            "recipe_bytes": sum(r.nbytes for r in archive.recipes),
            "working_copy_bytes": working_copies * dense_model,
            "recipe_archive_bytes": recipe_total,
            "recipe_archive_in_dense_models": recipe_total / dense_model,
            "max_segments": max(r.num_segments for r in archive.recipes)}
