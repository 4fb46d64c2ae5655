"""The M2N2 strategy: evosax-shaped init / ask / tell on an immutable archive.

:class:`M2N2` binds the static settings (an :class:`M2N2Config`) and a
:class:`VectorLayout`; its methods are pure, jitted, take explicit PRNG keys
and take the numeric settings as an :class:`M2N2Params` pytree, so a sweep
over them neither recompiles nor stops ``jax.vmap``::

    strategy = M2N2(M2N2Config(children_per_step=8), example_model)
    params = strategy.default_params
    state = strategy.init(key, [model_a, model_b], seed_scores, params)
    population, state = strategy.ask(key, state, params)          # [B, D] flat
    state, metrics = strategy.tell(key, population, fitness, state, params)
    best = strategy.best_model(state)                              # a pytree

Flat vectors are the engine's representation; ``ravel`` / ``unravel`` /
``best_model`` convert at the boundary. The compiled engine
(:func:`m2n2_jax.engine.runner.make_step`) calls these same methods.

The strategy owns its randomness, in one of two key orders:

- "engine": ``ask`` splits its key into B triples (parents, crossover,
  mutation), one per child; the state's key is not used.
- "reference": the authors' order (docs/algorithm.md). Their loop threads one
  key through the whole run and splits it at every child into (parents,
  crossover, mutation, next). That key lives in the state (it starts as
  ``init``'s key), so in this order ``ask`` ignores its key argument; a plain
  evosax loop then reproduces the authors' runs exactly.

``tell`` draws nothing; it takes a key only to keep evosax's signature.
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches
from m2n2_jax.algorithm.config import M2N2Config, M2N2Params
from m2n2_jax.errors import ConfigError, ScoreFunctionError, SeedModelError
from m2n2_jax.algorithm.flatten import VectorLayout, stack_seed_vectors
from m2n2_jax.algorithm.groups import grouped_crossover


@flax.struct.dataclass
class ArchiveState:
    """The archive of one run.

    params: [P, D] flat models (empty slots are zero vectors).
    scores: [P, N] per-datapoint scores (empty slots score zero).
    capacity: [N] capacity c_j of each datapoint (under "archive-max", the
        archive's best scores, updated by every tell; after the shift when the
        config subtracts the worst score).
    filled: [P] which slots hold a model: empty slots are never drawn as
        parents nor reported, and are replaced first.
    evaluated: children told so far (forward passes).
    inserted: children that entered the archive.
    key: the run's key in reference order (unused in engine order).

    Arrays only: the capacity rule and the other static settings are the config's.
    """

    params: jax.Array
    scores: jax.Array
    capacity: jax.Array
    filled: jax.Array
    evaluated: jax.Array
    inserted: jax.Array
    key: jax.Array

    @property
    def best_index(self) -> jax.Array:
        """The member with the highest mean score (the reported model); ties go to the
        lowest slot index among filled slots. Empty slots never count, whatever the scores' sign."""
        return best_filled(self.scores, self.filled)


def best_filled(scores, filled) -> jax.Array:
    """Index of the filled row of ``scores`` [P, N] with the highest mean (the lowest such index on ties)."""
    return jnp.argmax(jnp.where(filled, jnp.mean(scores, axis=1), -jnp.inf))


def check_scores(scores, num_children: int, num_datapoints: int | None) -> jax.Array:
    """Validate (statically) and cast scores [B, N] to float32."""
    scores = jnp.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != num_children or (
            num_datapoints is not None and scores.shape[1] != num_datapoints):
        want = f"({num_children}, {num_datapoints if num_datapoints is not None else 'N'})"
        raise ScoreFunctionError(
            f"scores have shape {scores.shape}, expected {want}: one score per child and datapoint. "
            "Make the score function return a vector with one entry per datapoint.")
    if not (jnp.issubdtype(scores.dtype, jnp.floating) or scores.dtype == jnp.bool_
            or jnp.issubdtype(scores.dtype, jnp.integer)):
        raise ScoreFunctionError(
            f"scores have dtype {scores.dtype}; return bool, integer or float scores.")
    return scores.astype(jnp.float32)


def check_capacity_rule(config: M2N2Config, capacity) -> None:
    """Refuse a given capacity under "auto": the rule must be the config's alone (the state holds arrays)."""
    if capacity is not None and config.capacity_rule == "auto":
        raise ConfigError("a capacity was given with capacity_rule='auto'; pass config.for_capacity(capacity) "
                          "(or set capacity_rule='fixed' or 'archive-max').")


def child_keys(key, num_children: int) -> jax.Array:
    """Engine order: keys [B, 3] (parents, crossover, mutation) for B children."""
    return jax.random.split(key, num_children * 3).reshape((num_children, 3) + key.shape)


def _competition(config: M2N2Config, state: ArchiveState):
    """(scores, capacity) that parent selection competes on (shifted by the worst member if so configured)."""
    if not config.subtract_worst:
        return state.scores, state.capacity
    return niches.shift_by_worst(state.scores, state.filled), state.capacity


def _make_child(config: M2N2Config, state: ArchiveState, params: M2N2Params, keys) -> jax.Array:
    """One child from keys [3]: select parents, cross them over, mutate."""
    a, b = niches.select_parents(keys[0], *_competition(config, state), params.alpha, config.use_attraction,
                                 reference=config.reference, filled=state.filled)
    x, y = state.params[a], state.params[b]
    if not config.use_crossover:
        child = x
    elif config.groups is not None:
        child = grouped_crossover(keys[1], x, y, config.groups, config.use_split_point, params.slerp_eps)
    else:
        child = xo.crossover(keys[1], x, y, config.use_split_point, params.slerp_eps, config.reference)
    if config.mutation_std > 0:  # static: merging runs compile mutation out
        child = xo.mutate(keys[2], child, params.mutation_std, config.noise_generator)
    return child


@functools.partial(jax.jit, static_argnums=0)
def _ask(config: M2N2Config, key, state: ArchiveState, params: M2N2Params):
    """Children from one snapshot; the key order is decided here, and nowhere else."""
    if config.reference:
        k_parents, k_cross, k_mut, next_key = jax.random.split(state.key, 4)
        keys, state = jnp.stack([k_parents, k_cross, k_mut])[None], state.replace(key=next_key)
    else:
        keys = child_keys(key, config.children_per_step)
    children = jax.vmap(lambda k: _make_child(config, state, params, k))(keys)
    return children, state


@functools.partial(jax.jit, static_argnums=0)
def _tell(config: M2N2Config, population, fitness, state: ArchiveState, params: M2N2Params):
    """Insertion: alpha is in params, the capacity rule and the worst-score shift in the (static) config."""
    population = jnp.asarray(population, state.params.dtype)
    adaptive = config.capacity_rule_for(jnp.asarray(fitness).dtype) == "archive-max"
    fitness = check_scores(fitness, population.shape[0], state.scores.shape[1])

    shift = config.subtract_worst
    given = state.capacity

    def insert_one(carry, child_and_scores):
        members, scores, filled = carry
        child, child_scores = child_and_scores
        members, scores, ok, slot = niches.insert(members, scores, child, child_scores, given,
                                                  params.alpha, adaptive, shift, filled)
        return (members, scores, filled.at[slot].set(filled[slot] | ok)), (ok, slot)

    (members, scores, filled), (ok, slots) = jax.lax.scan(
        insert_one, (state.params, state.scores, state.filled), (population, fitness))
    _, capacity = niches.competing(scores, given, filled, adaptive, shift)
    state = state.replace(params=members, scores=scores, capacity=capacity, filled=filled,
                          inserted=state.inserted + jnp.sum(ok, dtype=jnp.int32),
                          evaluated=state.evaluated + population.shape[0])
    best = state.best_index
    metrics = {"inserted": ok, "slot": jnp.where(ok, slots, -1), "best_index": best,
               "best_mean_score": jnp.mean(scores[best])}
    return state, metrics


@functools.partial(jax.jit, static_argnums=0)
def _init(config: M2N2Config, key, seeds, seed_scores, params: M2N2Params, capacity=None):
    num_points = check_scores(seed_scores, seeds.shape[0], None).shape[1]
    capacity = jnp.ones((num_points,), jnp.float32) if capacity is None else jnp.asarray(capacity, jnp.float32)
    if capacity.shape != (num_points,):
        raise ScoreFunctionError(
            f"capacity has shape {capacity.shape}, expected ({num_points},): one value per datapoint.")
    size = config.archive_size
    empty = ArchiveState(params=jnp.zeros((size, seeds.shape[1]), seeds.dtype),
                         scores=jnp.zeros((size, num_points), jnp.float32), capacity=capacity,
                         filled=jnp.zeros((size,), bool), evaluated=jnp.zeros((), jnp.int32),
                         inserted=jnp.zeros((), jnp.int32), key=key)
    state, _ = _tell(config, seeds, seed_scores, empty, params)
    return state.replace(evaluated=jnp.zeros((), jnp.int32))


class M2N2:
    """M2N2 with evosax's interface; see the module docstring.

    ``example_model`` (any pytree of parameters) or ``layout`` fixes how a
    model maps to a flat vector of length D.
    """

    def __init__(self, config: M2N2Config | None = None, example_model=None, *, layout: VectorLayout | None = None):
        if layout is None and example_model is None:
            raise ConfigError("M2N2 needs an example model (a pytree of parameters) or a VectorLayout.")
        self.config = config or M2N2Config()
        self.layout = layout or VectorLayout.of(example_model)

    @property
    def default_params(self) -> M2N2Params:
        """The config's numeric settings (alpha, mutation std, SLERP threshold) as a pytree."""
        return self.config.params()

    @property
    def num_dims(self) -> int:
        return self.layout.size

    def init(self, key, seeds, seed_scores, params: M2N2Params, capacity=None) -> ArchiveState:
        """Archive holding the seeds with their scores [K, N], inserted in order
        into an empty archive, as the reference does (not counted as forward passes).

        ``seeds``: a list or tuple of K >= 2 models (pytrees), or flat vectors [K, D].
        ``capacity``: [N] c_j (under "fixed"; needs a config whose rule is not "auto":
        ``config.for_capacity(capacity)``).
        """
        check_capacity_rule(self.config, capacity)
        if isinstance(seeds, (list, tuple)):
            _, vectors = stack_seed_vectors(seeds, self.layout)
        else:
            vectors = jnp.asarray(seeds)
            if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] != self.layout.size:
                raise SeedModelError(
                    f"seed vectors have shape {vectors.shape}, expected (K >= 2, {self.layout.size}); "
                    "pass a list of models or flat vectors [K, D].")
        return _init(self.config, key, vectors, seed_scores, params, capacity)

    def ask(self, key, state: ArchiveState, params: M2N2Params):
        """(population [B, D], state): B = children_per_step children from one snapshot."""
        return _ask(self.config, key, state, params)

    def tell(self, key, population, fitness, state: ArchiveState, params: M2N2Params):
        """(state, metrics): insert the children [B, D] with scores [B, N] one after another.

        metrics: inserted [B], slot [B] (-1 if rejected), best_index, best_mean_score.
        """
        return _tell(self.config, population, fitness, state, params)

    def ravel(self, model) -> jax.Array:
        return self.layout.ravel(model)

    def unravel(self, vector):
        return self.layout.unravel(vector)

    def unravel_batch(self, vectors):
        return jax.vmap(self.layout.unravel)(vectors)

    def best(self, state: ArchiveState):
        """(flat model [D], its mean score): the member a run reports (the search interface's report)."""
        return state.params[state.best_index], jnp.mean(state.scores[state.best_index])

    def best_model(self, state: ArchiveState):
        """The member with the highest mean score, as a pytree."""
        return self.unravel(state.params[state.best_index])
