"""The M2N2 strategy: an archive state and pure init / ask / tell functions.

In the style of evosax: ``init`` builds an immutable :class:`ArchiveState`,
``ask`` draws children from it with an explicit PRNG key, ``tell`` inserts
evaluated children one after another. All three are jittable and work on flat
parameter vectors; :class:`M2N2` binds a config and a :class:`VectorLayout` so
users can hand in and get back pytrees.
"""
from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from . import crossover as xo
from . import niches
from .config import M2N2Config
from .errors import ScoreFunctionError
from .flatten import VectorLayout, stack_seed_vectors
from .groups import grouped_crossover


@flax.struct.dataclass
class ArchiveState:
    """The archive of one run.

    params: [P, D] flat models (empty slots are zero vectors).
    scores: [P, N] per-datapoint scores (empty slots score zero).
    capacity: [N] capacity c_j of each datapoint.
    evaluated: children told so far (forward passes).
    inserted: children that entered the archive.
    """

    params: jax.Array
    scores: jax.Array
    capacity: jax.Array
    evaluated: jax.Array
    inserted: jax.Array

    @property
    def best_index(self) -> jax.Array:
        """The first member with the highest mean score (the reported model)."""
        return jnp.argmax(jnp.mean(self.scores, axis=1))


def empty_state(config: M2N2Config, num_params: int, num_datapoints: int,
                capacity=None, dtype=jnp.float32) -> ArchiveState:
    """An all-zero archive (empty slots are replaced first)."""
    size = config.archive_size
    capacity = jnp.ones((num_datapoints,), jnp.float32) if capacity is None else jnp.asarray(capacity, jnp.float32)
    if capacity.shape != (num_datapoints,):
        raise ScoreFunctionError(
            f"capacity has shape {capacity.shape}, expected ({num_datapoints},): one value per datapoint.")
    return ArchiveState(
        params=jnp.zeros((size, num_params), dtype),
        scores=jnp.zeros((size, num_datapoints), jnp.float32),
        capacity=capacity,
        evaluated=jnp.zeros((), jnp.int32),
        inserted=jnp.zeros((), jnp.int32),
    )


def init(config: M2N2Config, seeds: jax.Array, seed_scores: jax.Array, capacity=None) -> ArchiveState:
    """Archive holding the seed vectors [K, D] with their scores [K, N].

    Seeds are inserted in order into an empty archive, as the reference does;
    their evaluations do not count as forward passes of the search.
    """
    seeds = jnp.asarray(seeds)
    seed_scores = check_scores(seed_scores, seeds.shape[0], None)
    state = empty_state(config, seeds.shape[1], seed_scores.shape[1], capacity, seeds.dtype)
    state = tell(config, state, seeds, seed_scores)
    return state.replace(evaluated=jnp.zeros((), jnp.int32))


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


def child_keys(key, num_children: int) -> jax.Array:
    """Keys [B, 3] (parents, crossover, mutation) for B children."""
    return jax.random.split(key, num_children * 3).reshape((num_children, 3) + key.shape)


def make_child(config: M2N2Config, state: ArchiveState, keys) -> jax.Array:
    """One child from keys [3]: select parents, cross them over, mutate."""
    a, b = niches.select_parents(keys[0], state.scores, state.capacity, config.alpha,
                                 config.use_attraction, reference=config.key_order == "reference")
    x, y = state.params[a], state.params[b]
    if not config.use_crossover:
        child = x
    elif config.groups is not None:
        child = grouped_crossover(keys[1], x, y, config.groups, config.use_split_point, config.slerp_eps)
    else:
        child = xo.crossover(keys[1], x, y, config.use_split_point, config.slerp_eps)
    if config.mutation_std > 0:
        child = xo.mutate(keys[2], child, config.mutation_std, config.noise_generator)
    return child


def ask_with_keys(config: M2N2Config, state: ArchiveState, keys) -> jax.Array:
    """Children [B, D] from one archive snapshot, one key triple [B, 3] each."""
    return jax.vmap(lambda k: make_child(config, state, k))(keys)


def ask(config: M2N2Config, key, state: ArchiveState) -> jax.Array:
    """B = config.children_per_step children [B, D] drawn from ``state``."""
    return ask_with_keys(config, state, child_keys(key, config.children_per_step))


def tell(config: M2N2Config, state: ArchiveState, children, scores) -> ArchiveState:
    """Insert evaluated children [B, D] with scores [B, N], one after another."""
    children = jnp.asarray(children, state.params.dtype)
    scores = check_scores(scores, children.shape[0], state.scores.shape[1])

    def insert_one(carry, child_and_scores):
        params, archive_scores, inserted = carry
        child, child_scores = child_and_scores
        params, archive_scores, ok, _ = niches.insert(
            params, archive_scores, child, child_scores, state.capacity, config.alpha)
        return (params, archive_scores, inserted + ok.astype(jnp.int32)), None

    (params, new_scores, inserted), _ = jax.lax.scan(
        insert_one, (state.params, state.scores, state.inserted), (children, scores))
    return state.replace(params=params, scores=new_scores, inserted=inserted,
                         evaluated=state.evaluated + children.shape[0])


class M2N2:
    """M2N2 on pytree models: evosax-style init / ask / tell with jitted internals.

    Example::

        strategy = M2N2(M2N2Config(children_per_step=8), example_params)
        state = strategy.init([seed_a, seed_b], seed_scores)
        children = strategy.ask(key, state)              # [B, D] vectors
        scores = jax.vmap(my_score_fn)(strategy.unravel_batch(children))
        state = strategy.tell(state, children, scores)
        best = strategy.best_model(state)                # a pytree again
    """

    def __init__(self, config: M2N2Config, example_params, layout: VectorLayout | None = None):
        self.config = config
        self.layout = layout or VectorLayout.of(example_params)
        self._ask = jax.jit(lambda key, state: ask(config, key, state))
        self._tell = jax.jit(lambda state, c, s: tell(config, state, c, s))

    def init(self, seeds: Sequence, seed_scores, capacity=None) -> ArchiveState:
        _, vectors = stack_seed_vectors(seeds, self.layout)
        return init(self.config, vectors, seed_scores, capacity)

    def ask(self, key, state: ArchiveState) -> jax.Array:
        return self._ask(key, state)

    def tell(self, state: ArchiveState, children, scores) -> ArchiveState:
        check_scores(scores, jnp.shape(children)[0], state.scores.shape[1])
        return self._tell(state, children, scores)

    def ravel(self, params) -> jax.Array:
        return self.layout.ravel(params)

    def unravel(self, vector):
        return self.layout.unravel(vector)

    def unravel_batch(self, vectors):
        return jax.vmap(self.layout.unravel)(vectors)

    def best_model(self, state: ArchiveState):
        """The member with the highest mean score, as a pytree."""
        return self.unravel(state.params[state.best_index])
