"""Pytree <-> flat vector, the representation the engine evolves.

:class:`VectorLayout` records the structure, shapes and dtypes of a model's
parameters and an order of its leaves, so that a whole model is one vector of
length D. The order decides what a crossover's split point cuts: coordinates
before it come from one interpolation ratio, the rest from the other. The
default, :func:`natural_order`, is the pytree's own order (``jax.tree.leaves``)
except that dictionary keys compare numbered names by number (``Dense_2``
before ``Dense_10``; jax sorts keys as strings). A task may choose another:
the Llama family follows the checkpoint's own depth order
(:func:`m2n2_jax.llm.model.checkpoint_order`), the digits task the authors'
layout bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import SeedModelError


@dataclasses.dataclass(frozen=True)
class VectorLayout:
    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    order: tuple[int, ...]  # leaf indices in the order they appear in the vector

    @classmethod
    def of(cls, params, order: Sequence[int] | None = None) -> "VectorLayout":
        leaves, treedef = jax.tree.flatten(params)
        if not leaves:
            raise SeedModelError("the model has no parameters (empty pytree); pass a pytree of arrays.")
        order = natural_order(params) if order is None else tuple(order)
        if sorted(order) != list(range(len(leaves))):
            raise SeedModelError(f"layout order {order} is not a permutation of the {len(leaves)} leaves.")
        return cls(treedef, tuple(tuple(np.shape(l)) for l in leaves),
                   tuple(jnp.asarray(l).dtype for l in leaves), order)

    @property
    def size(self) -> int:
        return sum(math.prod(self.shapes[i]) for i in self.order)

    @property
    def dtype(self):
        """The vector's dtype: the widest float among the leaves."""
        return jnp.result_type(*self.dtypes)

    def ravel(self, params) -> jax.Array:
        leaves, treedef = jax.tree.flatten(params)
        self.check(params)
        return jnp.concatenate([jnp.ravel(leaves[i]).astype(self.dtype) for i in self.order])

    def unravel(self, vector: jax.Array):
        leaves = [None] * len(self.shapes)
        start = 0
        for i in self.order:
            n = math.prod(self.shapes[i])
            leaves[i] = vector[start:start + n].reshape(self.shapes[i]).astype(self.dtypes[i])
            start += n
        return jax.tree.unflatten(self.treedef, leaves)

    def check(self, params, name: str = "model") -> None:
        """Raise SeedModelError unless params has this layout's structure, shapes and dtypes."""
        leaves, treedef = jax.tree.flatten(params)
        if treedef != self.treedef:
            raise SeedModelError(
                f"{name} has tree structure {treedef}, expected {self.treedef}; "
                "all models must be instances of the same architecture.")
        for i, leaf in enumerate(leaves):
            shape, dtype = tuple(np.shape(leaf)), jnp.asarray(leaf).dtype
            if shape != self.shapes[i] or dtype != self.dtypes[i]:
                path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(params)[0][i][0])
                raise SeedModelError(
                    f"{name}: leaf {path} has shape {shape} and dtype {dtype}, expected "
                    f"{self.shapes[i]} and {self.dtypes[i]}; cast or rebuild the model to match the first seed.")


def _natural_key(text: str) -> list:
    """'layers_10' -> ['layers_', 10, '']: text and numbers alternate, so numbers compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def natural_order(params) -> tuple[int, ...]:
    """Leaf indices of ``jax.tree.flatten(params)`` with dictionary keys in natural order.

    jax sorts dict keys as strings (``layers_10`` before ``layers_2``); here a key's digit runs
    compare as numbers. Other containers (lists, tuples, dataclasses) keep their own order.
    """
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    first_seen: dict = {}

    def element(prefix, entry):
        if isinstance(entry, jax.tree_util.DictKey):
            return (0, _natural_key(str(entry.key)), str(entry.key))  # the raw key breaks ties ('a01', 'a1')
        return (1, [first_seen.setdefault((prefix, entry), len(first_seen))], "")

    keys = [[element(path[:depth], entry) for depth, entry in enumerate(path)] for path in paths]  # in leaf order
    return tuple(sorted(range(len(paths)), key=keys.__getitem__))


def stack_seed_vectors(seeds: Sequence, layout: VectorLayout | None = None):
    """Check that seed models share one layout and stack them as vectors [K, D]."""
    if len(seeds) < 2:
        raise SeedModelError(
            f"M2N2 needs at least two seed models (got {len(seeds)}); pass two or more pytrees.")
    layout = layout or VectorLayout.of(seeds[0])
    for k, seed in enumerate(seeds):
        layout.check(seed, name=f"seed model {k}")
    vectors = jnp.stack([layout.ravel(s) for s in seeds])
    check_finite_seeds(vectors)
    return layout, vectors


def check_finite_seeds(vectors) -> None:
    """Raise SeedModelError if a seed model has NaN or infinite parameters."""
    bad = np.nonzero(~np.all(np.isfinite(np.asarray(vectors)), axis=1))[0]
    if bad.size:
        raise SeedModelError(f"seed model {int(bad[0])} has NaN or infinite parameters; "
                             "check how it was trained or loaded (children with such parameters are discarded, "
                             "but a seed must be finite).")
