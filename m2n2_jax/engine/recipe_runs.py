"""Merges whose archives hold recipes, not dense models: ``m2n2 merge --archive recipes``.

Without mutation every member is a piecewise combination of the K input
models (:mod:`m2n2_jax.algorithm.recipes`), so R runs need the K inputs, their Gram
prefix sums and one working copy, instead of R x P dense models: what makes
merging 7B-class models fit in memory. The runs advance step by step on the
host (asks and tells are numpy: :class:`m2n2_jax.algorithm.recipes.RecipeM2N2`,
a host strategy); each step's children are materialised and scored on the
local devices in parallel, the seeds replicated on each
(:mod:`m2n2_jax.engine.recipe_scoring`), inside the one run function
(:func:`m2n2_jax.engine.search.run_search`): progress, checkpoints every so many
forward passes and Ctrl-C behave as for ``m2n2 evolve``. A checkpoint holds
the keys, scores and counters as arrays and the recipes (a few numbers per
segment) in its JSON item; a resumed run ends where an uninterrupted one does.
Keys are used as by the dense engine (run r starts from PRNGKey(seed_r); the
key chain :data:`m2n2_jax.engine.search.ENGINE`).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.engine import distributed
from m2n2_jax.engine import recipe_scoring
from m2n2_jax.engine import search
from m2n2_jax.algorithm import recipes
from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.chunk_loop import RunOptions, RunResult, Saved
from m2n2_jax.engine.identity import run_identity
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.tasks.base import Task


def _arrays(archives, keys) -> dict:
    """The fixed-shape part of R recipe archives (what orbax saves as arrays)."""
    return {"keys": np.asarray(keys), "scores": np.stack([np.asarray(a.scores) for a in archives]),
            "capacity": np.stack([np.asarray(a.capacity) for a in archives]),
            "filled": np.stack([np.asarray(a.members) for a in archives]),
            "evaluated": np.asarray([a.evaluated for a in archives], np.int64),
            "inserted": np.asarray([a.inserted for a in archives], np.int64)}


def _recipes_json(archives) -> list:
    """Every member's recipe as lists (float64 coefficients survive JSON exactly)."""
    return [[{"bounds": r.bounds.tolist(), "coeffs": r.coeffs.tolist()} for r in a.recipes] for a in archives]


def _archives_from(arrays: dict, recipes_json: list) -> list:
    out = []
    for r, members in enumerate(recipes_json):
        rec = tuple(recipes.Recipe(np.asarray(m["bounds"], np.int64), np.asarray(m["coeffs"], np.float64))
                    for m in members)
        out.append(recipes.RecipeArchive(rec, jnp.asarray(arrays["scores"][r]), jnp.asarray(arrays["capacity"][r]),
                                         int(arrays["evaluated"][r]), int(arrays["inserted"][r]),
                                         jnp.asarray(arrays["filled"][r], bool)))
    return out


def _rebuild(arrays: dict, meta: dict, like: search.HostRuns) -> search.HostRuns:
    """The runs a checkpoint holds: its arrays and the recipes of its JSON item."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    return search.HostRuns(_archives_from(arrays, meta["recipes"]), arrays["keys"])


# A checkpoint holds the arrays with orbax and the recipes (a few numbers per segment) as JSON.
SAVED = Saved(arrays=lambda runs: _arrays(runs.state, runs.key), meta=lambda runs: {"recipes": _recipes_json(runs.state)},
              rebuild=_rebuild)


def merge(config: M2N2Config, task: Task, seed_vectors, seeds, forward_passes: int, *, log_every: int | None = None,
          options: RunOptions = RunOptions(), scoring_dtype: str = "float32") -> RunResult:
    """R = len(seeds) M2N2 runs over recipe archives of the input models ``seed_vectors`` [K, D].

    options: progress and checkpoints; every log interval is a chunk of its own (each
    child may take seconds, so progress and saves follow every logged point);
    ``options.devices``: this process's devices that score each step's children
    in parallel (default all local devices; :mod:`m2n2_jax.engine.recipe_scoring`).
    scoring_dtype: "float32" or "bfloat16" (children materialised in bf16 for scoring).
    The results' ``execution.scoring`` holds the per-child scoring time and peak memory.
    """
    recipes.check_config(config)
    seeds = [int(s) for s in seeds]
    plan = plan_budget(forward_passes, config.children_per_step, log_every)
    bank = recipes.SeedBank.build(np.asarray(seed_vectors, np.float32))
    local = None if options.devices is None else [d for d in options.devices if d.process_index == jax.process_index()]
    scorer = recipe_scoring.ChildScorer(bank, task.score_vector, local or None, scoring_dtype)
    settings = dict(options.identity_extra or {})
    if scoring_dtype != "float32":  # other arithmetic: a checkpoint must not be resumed across it
        settings["scoring_dtype"] = scoring_dtype
    metrics = jax.jit(task.metrics)
    buffer = np.empty(bank.size, np.float32)

    def recipe_metrics(recipe) -> dict:
        return metrics(jnp.asarray(bank.materialise(recipe, buffer)))

    def score_children(children):
        if distributed.process_count() == 1:  # the local devices score their shares of the children
            return scorer(children)
        # multi-host: each process scores every n-th child on its devices (one all-gather per step)
        return distributed.map_over_processes(lambda c: scorer([c])[0], children, seed_scores[0])

    start = time.perf_counter()
    strat = recipes.RecipeM2N2(config, bank, task.capacity)
    seed_scores = jnp.asarray(scorer(strat.seeds()))
    identity = run_identity(config.to_dict(), task, seeds, forward_passes, plan.log_every, seed_vectors, settings,
                            archive="recipes", start_scores=seed_scores)
    distributed.check_agreement(distributed.run_digests(identity, task, seed_vectors))
    distributed.started()  # multi-host: processes agree on settings, seeds, models and data
    # host steps gain nothing from long chunks: return to the loop (progress, saves) after every log
    options = options.replace(chunk_forward_passes=plan.log_every)
    out = search.run_search(strat, None, search.Scorer(None, recipe_metrics, jittable=False, batch=score_children),
                            seeds, strat.seeds(), plan, options=options, identity=identity, seed_scores=seed_scores,
                            keys=search.ENGINE, saved=SAVED, headline=task.headline_metric, start=start)
    archives = out.runs.state
    best = np.stack([bank.materialise(recipe) for recipe in out.best])
    memory = recipes.archive_memory(bank, archives[0])
    return RunResult("recipes", seeds, out.forward_passes, out.metrics, out.wall_seconds, config.to_dict(), best,
                     extra={"execution": {"archive": "recipes", "platform": jax.default_backend(),
                                           "processes": distributed.process_count(), "scoring": scorer.stats()},
                            "archive_memory": {k: (round(v, 3) if isinstance(v, float) else int(v))
                                               for k, v in memory.items()}}, task=task.name, state=out.runs)
