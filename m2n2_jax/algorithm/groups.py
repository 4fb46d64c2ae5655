"""Parameter groups with their own split points ("chromosomes").

A task may split its flat parameter vector into G groups of coordinates (for
the diffusion merge: the attention layers and the rest). Grouped crossover
then draws one split point s_g and one mixing ratio w_g per group: within
group g, ordered by flat index, the first s_g coordinates get interpolation
value w_g and the rest 1 - w_g. The SLERP angle is the one between the whole
parent vectors, as in :func:`crossover.crossover`, so a child is still
``cx * x + cy * y`` with per-coordinate scalars, i.e. a piecewise combination
of the seeds. With one group this is exactly the engine's crossover (same key
use, same child).

A :class:`GroupSpec` is a frozen, hashable run-length description of the
group of every coordinate, so it can sit in a static config.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm.crossover import slerp_coefficients
from m2n2_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Runs (start, stop, group) covering coordinates 0..size-1, and group names."""

    runs: tuple[tuple[int, int, int], ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if not self.runs or self.runs[0][0] != 0:
            raise ConfigError("a GroupSpec needs runs covering coordinates from 0; build it with GroupSpec.from_ids.")
        for (a, b, g), nxt in zip(self.runs, self.runs[1:] + ((None, None, None),)):
            if b <= a or not 0 <= g < len(self.names) or (nxt[0] is not None and nxt[0] != b):
                raise ConfigError(f"GroupSpec run {(a, b, g)} is empty, out of order or names an unknown group; "
                                  "build it with GroupSpec.from_ids.")
        present = {g for _, _, g in self.runs}
        if present != set(range(len(self.names))):
            missing = sorted(set(range(len(self.names))) - present)
            raise ConfigError(f"groups {[self.names[g] for g in missing]} have no coordinates; drop them.")

    @classmethod
    def from_ids(cls, ids, names: Sequence[str] | None = None) -> "GroupSpec":
        """From a group id per coordinate [D] (ints 0..G-1, every group non-empty)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
            raise ConfigError(f"group ids must be a non-empty 1-D array of integers >= 0 (got shape {ids.shape}, "
                              f"dtype {ids.dtype}).")
        num = int(ids.max()) + 1
        names = tuple(names) if names is not None else tuple(f"group{g}" for g in range(num))
        if len(names) != num:
            raise ConfigError(f"{len(names)} group names for {num} groups; give one name per group id.")
        change = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [ids.size]])
        return cls(tuple((int(a), int(b), int(ids[a])) for a, b in zip(starts, stops)), names)

    @classmethod
    def from_params(cls, layout, params, group_of: Callable[[str], int], names: Sequence[str]) -> "GroupSpec":
        """Groups of a pytree's flat vector: ``group_of(path string)`` gives each leaf's group."""
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        marks = jax.tree.unflatten(jax.tree.structure(params),
                                   [jnp.full(np.shape(l), group_of(p), jnp.float32)
                                    for p, l in zip(paths, jax.tree.leaves(params))])
        return cls.from_ids(np.asarray(layout.ravel(marks)).astype(np.int64), names)

    @classmethod
    def single(cls, size: int) -> "GroupSpec":
        return cls(((0, int(size), 0),), ("all",))

    @property
    def size(self) -> int:
        return self.runs[-1][1]

    @property
    def num_groups(self) -> int:
        return len(self.names)

    def ids(self) -> np.ndarray:
        """Group id of every coordinate [D]."""
        out = np.empty(self.size, np.int32)
        for a, b, g in self.runs:
            out[a:b] = g
        return out

    def sizes(self) -> np.ndarray:
        """Coordinates per group [G]."""
        return np.bincount(self.ids(), minlength=self.num_groups).astype(np.int32)

    def ranks(self) -> np.ndarray:
        """Position of every coordinate within its group [D] (0-based, by flat index)."""
        ids = self.ids()
        out = np.empty(self.size, np.int32)
        for g in range(self.num_groups):
            where = ids == g
            out[where] = np.arange(int(where.sum()), dtype=np.int32)
        return out

    def to_dict(self) -> dict:
        return {"names": list(self.names), "sizes": [int(s) for s in self.sizes()], "runs": len(self.runs)}


def draw_group_splits(key, groups: GroupSpec, use_split_point: bool = True):
    """(split points [G], ratios [G]) for one child.

    With one group and a split point this uses ``key`` exactly as
    :func:`crossover.crossover` does; without a split point every split is the
    group's size, so all coordinates of group g get w_g (one group: the
    engine's crossover without split point, same key use).
    """
    sizes = jnp.asarray(groups.sizes())
    shape = () if groups.num_groups == 1 else (groups.num_groups,)
    if not use_split_point:
        return sizes, jax.random.uniform(key, shape).reshape(groups.num_groups)
    k_split, k_w = jax.random.split(key)
    splits = jax.random.randint(k_split, shape, 0, sizes.reshape(shape) if shape else sizes[0])
    w = jax.random.uniform(k_w, shape)
    return splits.reshape(groups.num_groups).astype(jnp.int32), w.reshape(groups.num_groups)


def grouped_child(x, y, groups: GroupSpec, splits, ratios, eps: float = 1e-6):
    """SLERP child of x and y with t = ratios[g] before splits[g] in group g, 1 - ratios[g] after."""
    ids = jnp.asarray(groups.ids())
    before = jnp.asarray(groups.ranks()) < splits[ids]
    t_all = jnp.concatenate([ratios, 1.0 - ratios])            # [2G]
    cx, cy = slerp_coefficients(x, y, t_all, eps)
    num = groups.num_groups
    pick = jnp.where(before, ids, ids + num)
    return cx[pick] * x + cy[pick] * y


def grouped_crossover(key, x, y, groups: GroupSpec, use_split_point: bool = True, eps: float = 1e-6):
    """Child of x (parent A) and y (parent B): one split point and ratio per group."""
    if groups.size != x.shape[0]:
        raise ConfigError(f"the group spec covers {groups.size} coordinates but the model has {x.shape[0]}; "
                          "build the spec from the same layout as the model vectors.")
    splits, ratios = draw_group_splits(key, groups, use_split_point)
    return grouped_child(x, y, groups, splits, ratios, eps)
