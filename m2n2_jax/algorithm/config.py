"""Configuration of the M2N2 engine and the named methods of the paper.

A :class:`M2N2Config` is a frozen (hashable) dataclass holding every setting;
every ablation of the paper is one field. Its numeric settings also make an
:class:`M2N2Params` pytree (``config.params()``) that the strategy's
``ask`` / ``tell`` take as an argument, so a sweep over alpha or the mutation
std neither recompiles nor stops ``jax.vmap``; the structural settings (archive size,
children per step, ablation switches, key order, noise generator, capacity
rule) are static.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from m2n2_jax.algorithm.crossover import REFERENCE_SLERP_EPS, SLERP_EPS
from m2n2_jax.errors import ConfigError
from m2n2_jax.algorithm.groups import GroupSpec

KeyOrder = Literal["engine", "reference"]
CapacityRule = Literal["auto", "fixed", "archive-max"]


@flax.struct.dataclass
class M2N2Params:
    """The numeric settings of M2N2, a pytree (leaves may be traced or batched).

    alpha: competition exponent. mutation_std: std of the mutation noise (used
    when the config compiles mutation in, i.e. its mutation_std > 0).
    slerp_eps: SLERP's degeneracy threshold on sin(angle).
    """

    alpha: jax.Array | float
    mutation_std: jax.Array | float
    slerp_eps: jax.Array | float


@dataclasses.dataclass(frozen=True)
class M2N2Config:
    """Settings of one M2N2 run.

    archive_size: number of models kept (P).
    alpha: competition exponent; 1 is M2N2, 0 turns niches off (plain GA).
    use_crossover: SLERP crossover of two parents; off means the child is parent A.
    use_split_point: per-coordinate mixing ratio w / 1-w around a random split point.
    use_attraction: parent B drawn by attraction to parent A (else by fitness).
    mutation_std: std of Gaussian noise added to each child (0 disables, as when
        merging pre-trained models).
    children_per_step: B children drawn from one archive snapshot, evaluated
        together and inserted one after another (B = 1 is the reference).
    key_order: "engine" (default, any B) or "reference", which follows the
        authors' PRNG key order and degenerate-probability behaviour exactly
        (B = 1 only).
    slerp_eps: at or below this sin(angle) the parents count as parallel or
        antiparallel (see crossover.slerp_coefficients). None: 1e-3 in engine
        order, the authors' 1e-6 in reference order.
    capacity_rule: c_j of datapoint j. "fixed": the capacity given (1 by
        default); "archive-max": the best score any archive member (and the
        child being inserted) reaches on j, the paper's rule for continuous
        scores; "auto" (default): "fixed" for boolean scores, else "archive-max"
        (identical to 1 for 0/1 scores). A run given capacities reads "auto" as
        "fixed" (:meth:`for_capacity`). The rule lives here only, never in a state.
    noise: mutation-noise generator: "threefry" (jax.random.normal, the
        reference's sampler; the default) or "hash" (a keyed counter hash,
        cheaper to draw; its speed and results against threefry are in the
        README's design notes and docs/results/digits-noise-study).
    subtract_worst: before competition, subtract from each datapoint's scores
        the worst score any archive member (and, at insertion, the child)
        reaches on it, as the paper does for its continuous diffusion scores;
        empty slots then take no part in competition and are filled first.
        Under "archive-max" the capacity is the best score after the shift.
    groups: parameter groups with their own split point and ratio each
        (:class:`groups.GroupSpec`; None: one split point over the whole vector).
        :func:`evolution.evolve` fills it in from ``Task.groups``.
    """

    archive_size: int = 20
    alpha: float = 1.0
    use_crossover: bool = True
    use_split_point: bool = True
    use_attraction: bool = True
    mutation_std: float = 0.01
    children_per_step: int = 1
    key_order: KeyOrder = "engine"
    slerp_eps: float | None = None
    noise: Literal["hash", "threefry"] = "threefry"
    capacity_rule: CapacityRule = "auto"
    subtract_worst: bool = False
    groups: GroupSpec | None = None

    def __post_init__(self):
        if not isinstance(self.archive_size, int) or self.archive_size < 2:
            raise ConfigError(
                f"archive_size must be an integer >= 2 (got {self.archive_size!r}); "
                "M2N2 needs room for two parents, the paper uses 20.")
        if not (self.alpha >= 0):
            raise ConfigError(f"alpha must be >= 0 (got {self.alpha!r}); use 1 for M2N2, 0 for a plain GA.")
        if not (self.mutation_std >= 0):
            raise ConfigError(f"mutation_std must be >= 0 (got {self.mutation_std!r}); use 0 to disable mutation.")
        if not isinstance(self.children_per_step, int) or self.children_per_step < 1:
            raise ConfigError(
                f"children_per_step must be an integer >= 1 (got {self.children_per_step!r}).")
        if self.key_order not in ("engine", "reference"):
            raise ConfigError(f"key_order must be 'engine' or 'reference' (got {self.key_order!r}).")
        if self.capacity_rule not in ("auto", "fixed", "archive-max"):
            raise ConfigError(
                f"capacity_rule must be 'auto', 'fixed' or 'archive-max' (got {self.capacity_rule!r}).")
        if self.slerp_eps is not None and not (0 <= self.slerp_eps < 1):
            raise ConfigError(f"slerp_eps must be in [0, 1) (got {self.slerp_eps!r}); the default is 1e-3.")
        if self.noise not in ("hash", "threefry"):
            raise ConfigError(f"noise must be 'hash' or 'threefry' (got {self.noise!r}).")
        if self.key_order == "reference" and self.subtract_worst:
            raise ConfigError("key_order='reference' follows the authors' digits code, which does not subtract "
                              "the worst score; set subtract_worst=False or use key_order='engine'.")
        if self.key_order == "reference" and self.children_per_step != 1:
            raise ConfigError(
                "key_order='reference' follows the authors' one-child-per-step loop; "
                f"set children_per_step=1 (got {self.children_per_step}) or use key_order='engine'.")

    @property
    def noise_generator(self) -> str:
        """The generator actually used: the reference order implies threefry."""
        return "threefry" if self.key_order == "reference" else self.noise

    @property
    def reference(self) -> bool:
        return self.key_order == "reference"

    def params(self) -> M2N2Params:
        """The numeric settings as a pytree (float32 scalars)."""
        eps = self.slerp_eps
        if eps is None:
            eps = REFERENCE_SLERP_EPS if self.reference else SLERP_EPS
        f32 = lambda v: jnp.asarray(v, jnp.float32)
        return M2N2Params(alpha=f32(self.alpha), mutation_std=f32(self.mutation_std), slerp_eps=f32(eps))

    def capacity_rule_for(self, scores_dtype) -> str:
        """The rule in force for scores of ``scores_dtype``: "auto" is "fixed" for boolean
        scores, else "archive-max" (identical for 0/1 scores, only cheaper)."""
        if self.capacity_rule != "auto":
            return self.capacity_rule
        return "fixed" if jnp.dtype(scores_dtype) == jnp.bool_ else "archive-max"

    def for_capacity(self, capacity) -> "M2N2Config":
        """This config for a run given ``capacity`` (None: none): "auto" becomes "fixed" when one is
        given, so the rule is read from the config alone (a state holds arrays only)."""
        if capacity is None or self.capacity_rule != "auto":
            return self
        return self.replace(capacity_rule="fixed")

    def replace(self, **changes) -> "M2N2Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
