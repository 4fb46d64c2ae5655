"""Every method ``m2n2 evolve --method`` knows, behind one function.

The M2N2 family (``config.METHODS``) runs on the engine; the baselines
(evosax strategies, MAP-Elites, brute force) on their own modules. All return a
:class:`~m2n2_jax.baselines.driver.BaselineResult`, so the results files are
the same whatever the method.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .baselines.driver import BaselineResult
from .config import METHODS, method_config
from .errors import ConfigError
from .tasks.base import Task

ES_NAMES = ("cma-es", "sep-cma-es", "lm-ma-es", "open-es", "simple-ga")
BASELINES = ES_NAMES + ("map-elites", "brute-force")
ALL_METHODS = tuple(METHODS) + BASELINES
INITS = ("scratch", "pretrained")
# Budgets of the paper: 50k forward passes from scratch, 10k when merging pre-trained models.
# Methods that save checkpoints and resume (brute force is one quick sweep).
CHECKPOINTING_METHODS = tuple(METHODS) + tuple(m for m in BASELINES if m != "brute-force")
DEFAULT_FORWARD_PASSES = {"scratch": 50_000, "pretrained": 10_000}


def check_method(method: str, init: str = "scratch") -> None:
    if method not in ALL_METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}.")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose 'scratch' or 'pretrained'.")
    if init == "pretrained" and method in ES_NAMES:
        raise ConfigError(f"{method} starts from N(0, 0.01^2) as in the paper; run it with --init scratch.")
    if init == "scratch" and method == "brute-force":
        raise ConfigError("brute-force searches SLERP ratios between two pre-trained models; use --init pretrained.")


def seed_models_for(task: Task, init: str):
    if init == "scratch":
        return None
    if task.pretrained_seeds is None:
        raise ConfigError(f"task {task.name!r} has no pre-trained models; use --init scratch.")
    return np.asarray(task.pretrained_seeds())


def run_method(method: str, task: Task, seeds: Sequence[int], forward_passes: int, *, init: str = "scratch",
               log_every: int | None = None, batch: int = 1, eval_batch_size: int | None = None,
               progress=False, key_order: str = "engine", sigma: float | None = None, devices=None,
               checkpoint_dir=None, checkpoint_every=None, checkpoint_seconds=None, resume=False,
               identity_extra=None, **overrides) -> BaselineResult:
    """Run ``method`` for R = len(seeds) runs of ``forward_passes`` each.

    overrides: M2N2 config fields (alpha, mutation_std, archive_size, noise);
    mutation_std, noise and key_order also apply to MAP-Elites. Merging pre-trained models
    defaults to no mutation, as in the paper.
    """
    check_method(method, init)
    seed_models = seed_models_for(task, init)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if init == "pretrained" and (method in METHODS or method == "map-elites"):
        overrides.setdefault("mutation_std", 0.0)
    if method in METHODS:
        from .evolution import evolve

        config = method_config(method, children_per_step=batch, key_order=key_order, **overrides)
        res = evolve(config, task, seeds, forward_passes, log_every=log_every, seed_models=seed_models,
                     eval_batch_size=eval_batch_size, progress=progress, devices=devices,
                     checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                     checkpoint_seconds=checkpoint_seconds, resume=resume, identity_extra=identity_extra)
        return BaselineResult(method, res.seeds, res.forward_passes, res.metrics, res.wall_seconds,
                              config.to_dict(), res.best_vectors(), extra={"execution": res.execution})
    extra_ok = {"map-elites": {"mutation_std", "noise"}}.get(method, set())
    if set(overrides) - extra_ok or (batch != 1 and method != "brute-force"):
        bad = sorted(set(overrides) - extra_ok) + (["batch"] if batch != 1 else [])
        raise ConfigError(f"{method} does not take {', '.join(bad)}; those options are for the M2N2 family.")
    if sigma is not None and method not in ES_NAMES:
        raise ConfigError(f"--sigma is for the evosax strategies ({', '.join(ES_NAMES)}), not {method}.")
    from .chunk_loop import Checkpointing

    checkpointing = Checkpointing(checkpoint_dir, checkpoint_every, checkpoint_seconds, resume)
    if method in ES_NAMES:
        from .baselines.evosax_es import run_es

        return run_es(method, task, seeds, forward_passes, log_every=log_every, sigma=sigma,
                      eval_batch_size=eval_batch_size or 2, progress=progress, checkpointing=checkpointing,
                      identity_extra=identity_extra)
    if method == "map-elites":
        from .baselines.map_elites import run_map_elites

        return run_map_elites(task, seeds, forward_passes, mutation_std=overrides.get("mutation_std", 0.01),
                              seed_models=seed_models, log_every=log_every, eval_batch_size=eval_batch_size,
                              progress=progress, checkpointing=checkpointing, identity_extra=identity_extra,
                              key_order=key_order, noise=overrides.get("noise", "threefry"))
    if checkpointing.directory:
        raise ConfigError(f"{method} does not checkpoint (it is one quick sweep); pass --no-checkpoint.")
    from .baselines.brute_force import run_brute_force

    return run_brute_force(task, seeds, forward_passes, seed_models=seed_models)
