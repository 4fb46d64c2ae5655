"""The one table of methods: every name ``m2n2 evolve``, ``merge`` and ``compare`` know.

Each :class:`Method` says how it runs (its family: the M2N2 engine, an evosax
strategy, MAP-Elites or the brute-force SLERP sweep) and what it supports:
starting from scratch or from pre-trained models, merging given models,
recipe archives, checkpoints, the algorithm options it honours and the key
orders it implements. The CLI, :mod:`m2n2_jax.io.compare`, ``m2n2 merge`` and the
pipelines read this table; :func:`prepare` checks a request against it once, in
one line per mistake, and returns the run to start. Every method returns a
:class:`~m2n2_jax.engine.chunk_loop.RunResult`, so result files look the same whatever
the method.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np

from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.algorithm.recipes import check_config
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult
from m2n2_jax.engine.evolution import check_seeds, evolve
from m2n2_jax.engine import recipe_runs
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods import es_strategies
from m2n2_jax.methods.brute_force import run_brute_force
from m2n2_jax.methods.map_elites import run_map_elites
from m2n2_jax.tasks.base import Task

INITS = ("scratch", "pretrained")
# Budgets of the paper: 50k forward passes from scratch, 10k when merging pre-trained models.
DEFAULT_FORWARD_PASSES = {"scratch": 50_000, "pretrained": 10_000}
KEY_ORDERS = ("engine", "reference")
# Algorithm options (CLI --names with '_'); a method refuses those it does not honour.
ENGINE_OPTIONS = frozenset({"batch", "archive_size", "alpha", "mutation_std", "noise", "subtract_worst"})


@dataclasses.dataclass(frozen=True)
class Method:
    """One method and what it supports."""

    name: str
    family: str                           # "engine", "evosax", "map-elites" or "brute-force"
    about: str
    overrides: dict = dataclasses.field(default_factory=dict)  # engine: changes to the default M2N2Config
    inits: tuple[str, ...] = INITS        # scratch (N(0, 0.01^2) seeds) and/or pretrained (given models)
    options: frozenset = frozenset()      # algorithm options honoured (see ENGINE_OPTIONS, "sigma")
    key_orders: tuple[str, ...] = ("engine",)  # PRNG key orders implemented ("reference": the authors')
    checkpoints: bool = True              # saves checkpoints and resumes
    recipes: bool = False                 # runs on recipe archives (m2n2 merge --archive recipes)
    models: int | None = None             # exact number of models it merges (None: two or more)
    fp_per_step: int | None = None        # budgets must be multiples of this (None: the batch)

    @property
    def merges(self) -> bool:
        """Can merge given models (``m2n2 merge``)."""
        return "pretrained" in self.inits


def _engine(name: str, overrides: dict, about: str) -> Method:
    return Method(name, "engine", about, overrides, options=ENGINE_OPTIONS, key_orders=KEY_ORDERS, recipes=True)


def _evosax(name: str) -> Method:
    return Method(name, "evosax", es_strategies.STRATEGIES[name].about, inits=("scratch",), options=frozenset({"sigma"}),
                  fp_per_step=es_strategies.POPULATION)


REGISTRY: dict[str, Method] = {m.name: m for m in (
    _engine("m2n2", {}, "M2N2: competition, attraction, SLERP crossover at a split point"),
    _engine("m2n2-no-crossover", {"use_crossover": False}, "M2N2 without crossover (mutation only)"),
    _engine("m2n2-no-split-point", {"use_split_point": False}, "M2N2, one mixing ratio for all coordinates"),
    _engine("m2n2-no-attraction", {"use_attraction": False}, "M2N2, both parents drawn by fitness"),
    _engine("ga", {"alpha": 0.0, "use_attraction": False}, "GA: no competition, no attraction"),
    _engine("ga-no-crossover", {"alpha": 0.0, "use_attraction": False, "use_crossover": False},
            "GA without crossover"),
    *(_evosax(name) for name in es_strategies.STRATEGIES),
    Method("map-elites", "map-elites", "MAP-Elites, 10 x 10 grid over odd/even-digit accuracy, parents and "
           "noise as the authors draw them", options=frozenset({"mutation_std", "noise"}),
           key_orders=("engine", "reference")),
    Method("brute-force", "brute-force", "the best of K SLERP ratios between two models", inits=("pretrained",),
           checkpoints=False, models=2),
)}
ALL_METHODS = tuple(REGISTRY)
# Families that hold an archive of dense models, with its default size (what the memory check counts).
ARCHIVE_SIZES: dict[str, int] = {"engine": 20, "map-elites": 100}
# The M2N2 family as changes to the default config (what method_config applies).
METHODS: dict[str, dict] = {m.name: m.overrides for m in REGISTRY.values() if m.family == "engine"}


def get(method: str) -> Method:
    if method not in REGISTRY:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(REGISTRY)}.")
    return REGISTRY[method]


def names(where: Callable[[Method], bool] = lambda m: True) -> tuple[str, ...]:
    """Names of the methods for which ``where`` holds, in table order."""
    return tuple(m.name for m in REGISTRY.values() if where(m))


def method_config(method: str, **overrides) -> M2N2Config:
    """The M2N2Config of an engine method (``m2n2``, an ablation, ``ga``...), with field overrides."""
    spec = get(method)
    if spec.family != "engine":
        raise ConfigError(f"{method} is not one of the M2N2 family ({', '.join(METHODS)}); it has no M2N2Config.")
    return M2N2Config(**{**spec.overrides, **overrides})


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def check(method: str, init: str = "scratch", settings: dict | None = None, num_models: int | None = None,
          archive: str = "dense") -> Method:
    """The method's entry, refusing in one line what it does not support.

    settings: algorithm options given (None or absent: not given; batch 1 and key
    order "engine" are the defaults every method has).
    """
    spec = get(method)
    if num_models is not None:
        if not spec.merges:
            raise ConfigError(f"{method!r} cannot merge given models; choose one of: "
                              f"{', '.join(names(lambda m: m.merges))}.")
        if spec.models is not None and num_models != spec.models:
            raise ConfigError(f"{method} merges exactly {spec.models} models (got {num_models}).")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose 'scratch' or 'pretrained'.")
    if init not in spec.inits:
        raise ConfigError(f"{method} starts from N(0, 0.01^2) as in the paper; run it with --init scratch."
                          if init == "pretrained" else
                          f"{method} merges given models ({spec.about}); use --init pretrained or m2n2 merge.")
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    key_order = settings.pop("key_order", "engine")
    if key_order not in KEY_ORDERS:
        raise ConfigError(f"unknown key order {key_order!r}; choose one of: {', '.join(KEY_ORDERS)}.")
    if key_order not in spec.key_orders:
        raise ConfigError(f"--key-order {key_order} is not implemented for {method} (it supports: "
                          f"{', '.join(spec.key_orders)}); drop the option or choose another method.")
    if settings.get("batch", 1) == 1:
        settings.pop("batch", None)
    refused = sorted(set(settings) - spec.options)
    if refused:
        takes = ", ".join(sorted(_flag(o) for o in spec.options)) or "none of them"
        raise ConfigError(f"{method} does not take {', '.join(_flag(o) for o in refused)} (its options: {takes}).")
    if archive == "recipes" and not spec.recipes:
        raise ConfigError(f"--archive recipes runs the M2N2 family ({', '.join(names(lambda m: m.recipes))}), "
                          f"not {method}; use --archive dense for it.")
    return spec


def seed_models_for(task: Task, init: str):
    if init == "scratch":
        return None
    if task.pretrained_seeds is None:
        raise ConfigError(f"task {task.name!r} has no pre-trained models; use --init scratch.")
    return np.asarray(task.pretrained_seeds())


def prepare(method: str, task: Task, seeds: Sequence[int], forward_passes: int, *, init: str = "scratch",
            **rest) -> Callable[[RunOptions], RunResult]:
    """Check a request once and return ``run(options) -> RunResult`` (see :func:`_prepare_run`).

    Merging given models (``init="pretrained"``), a run whose model does not beat the best
    input reports that input unchanged (:mod:`m2n2_jax.engine.best_input`).
    """
    run = _prepare_run(method, task, seeds, forward_passes, init=init, **rest)
    if init != "pretrained":
        return run
    from m2n2_jax.engine.best_input import keep_best_input

    inputs = seed_models_for(task, init)
    return lambda options: keep_best_input(run(options), task, inputs)


def _prepare_run(method: str, task: Task, seeds: Sequence[int], forward_passes: int, *, init: str = "scratch",
                 log_every: int | None = None, archive: str = "dense", scoring_dtype: str = "float32",
                 **settings) -> Callable[[RunOptions], RunResult]:
    """Check a request once and return ``run(options) -> RunResult``.

    settings: algorithm options (batch, archive_size, alpha, mutation_std, noise,
    sigma, key_order; None means the method's default; mutation_std, noise and key_order
    also apply to MAP-Elites). Merging pre-trained models
    defaults to no mutation, as in the paper. scoring_dtype: "float32" or
    "bfloat16", the dtype recipe children are scored in (``archive="recipes"`` only).
    """
    seeds = check_seeds(seeds)
    spec = check(method, init, settings, archive=archive)
    if scoring_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"unknown scoring dtype {scoring_dtype!r}; choose float32 or bfloat16.")
    if scoring_dtype != "float32" and archive != "recipes":
        raise ConfigError(f"--scoring-dtype {scoring_dtype} applies to --archive recipes only; add --archive recipes "
                          "or drop the option.")
    seed_models = seed_models_for(task, init)
    given = {k: v for k, v in settings.items() if v is not None}
    if init == "pretrained" and "mutation_std" in spec.options:
        given.setdefault("mutation_std", 0.0)
    batch = given.pop("batch", 1)
    plan_budget(forward_passes, spec.fp_per_step or batch, log_every)  # refuse a bad budget before anything runs
    if spec.family == "engine":
        config = method_config(method, children_per_step=batch, **given)
        if archive == "recipes":
            check_config(config)
            return functools.partial(_run_recipes, spec, config, task, seed_models, seeds, forward_passes, log_every,
                                     scoring_dtype)
        return functools.partial(_run_engine, spec, config, task, seed_models, seeds, forward_passes, log_every)
    if spec.family == "evosax":
        from m2n2_jax.methods import evosax_es  # importing evosax starts JAX's backends: only when used

        evosax_es.build(method, 1, given.get("sigma"))  # refuses a bad sigma now
        return functools.partial(_run_evosax, spec, task, seeds, forward_passes, log_every, given.get("sigma"))
    if spec.family == "map-elites":
        return lambda options: run_map_elites(task, seeds, forward_passes, seed_models=seed_models,
                                              mutation_std=given.get("mutation_std", 0.01), log_every=log_every,
                                              options=options, key_order=given.get("key_order", "engine"),
                                              noise=given.get("noise", "threefry"))
    if seed_models is not None and len(seed_models) != spec.models:
        raise ConfigError(f"{method} merges exactly {spec.models} models (got {len(seed_models)}).")

    def brute_force(options: RunOptions) -> RunResult:
        if options.checkpointing.directory:
            raise ConfigError(f"{method} does not checkpoint (it is one quick sweep); pass --no-checkpoint.")
        return run_brute_force(task, seeds, forward_passes, seed_models=seed_models)

    return brute_force


def run_method(method: str, task: Task, seeds: Sequence[int], forward_passes: int, *, init: str = "scratch",
               log_every: int | None = None, options: RunOptions = RunOptions(), **settings) -> RunResult:
    """Run ``method`` for R = len(seeds) runs of ``forward_passes`` each (see :func:`prepare`)."""
    return prepare(method, task, seeds, forward_passes, init=init, log_every=log_every, **settings)(options)


def _run_engine(spec, config, task, seed_models, seeds, forward_passes, log_every, options):
    return evolve(config, task, seeds, forward_passes, log_every=log_every, seed_models=seed_models,
                  options=options, method=spec.name)


def _run_recipes(spec, config, task, seed_models, seeds, forward_passes, log_every, scoring_dtype, options):
    res = recipe_runs.merge(config, task, seed_models, seeds, forward_passes, log_every=log_every, options=options,
                            scoring_dtype=scoring_dtype)
    return dataclasses.replace(res, method=spec.name)


def _run_evosax(spec, task, seeds, forward_passes, log_every, sigma, options):
    from m2n2_jax.methods import evosax_es  # importing evosax starts JAX's backends: only when used

    return evosax_es.run_es(spec.name, task, seeds, forward_passes, log_every=log_every, sigma=sigma, options=options)
