"""Merges whose archives hold recipes, not dense models: ``m2n2 merge --archive recipes``.

Without mutation every member is a piecewise combination of the K input
models (:mod:`m2n2_jax.recipes`), so R runs need the K inputs, their Gram
prefix sums and one working copy, instead of R x P dense models: what makes
merging 7B-class models fit in memory. The runs advance step by step on the
host (asks and tells are numpy; each child is materialised once and scored by
the task's jitted score function) inside the same chunked loop as the engine
(:func:`m2n2_jax.chunk_loop.run_chunks`): progress, checkpoints every so many
forward passes and Ctrl-C behave as for ``m2n2 evolve``. A checkpoint holds
the keys, scores and counters as arrays and the recipes (a few numbers per
segment) in its JSON item; a resumed run ends where an uninterrupted one does.
Keys are used as by the dense engine (run r starts from PRNGKey(seed_r)).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from . import distributed, recipes, runner
from .baselines.driver import BaselineResult
from .checkpoint import RunCheckpointer
from .chunk_loop import Checkpointing, check_identity, run_chunks
from .config import M2N2Config
from .tasks.base import Task


def _arrays(archives, keys) -> dict:
    """The fixed-shape part of R recipe archives (what orbax saves as arrays)."""
    return {"keys": np.asarray(keys), "scores": np.stack([np.asarray(a.scores) for a in archives]),
            "capacity": np.stack([np.asarray(a.capacity) for a in archives]),
            "evaluated": np.asarray([a.evaluated for a in archives], np.int64),
            "inserted": np.asarray([a.inserted for a in archives], np.int64)}


def _recipes_json(archives) -> list:
    """Every member's recipe as lists (float64 coefficients survive JSON exactly)."""
    return [[{"bounds": r.bounds.tolist(), "coeffs": r.coeffs.tolist()} for r in a.recipes] for a in archives]


def _archives_from(arrays: dict, recipes_json: list, adaptive_capacity: bool = False) -> list:
    out = []
    for r, members in enumerate(recipes_json):
        rec = tuple(recipes.Recipe(np.asarray(m["bounds"], np.int64), np.asarray(m["coeffs"], np.float64))
                    for m in members)
        out.append(recipes.RecipeArchive(rec, jnp.asarray(arrays["scores"][r]), jnp.asarray(arrays["capacity"][r]),
                                         int(arrays["evaluated"][r]), int(arrays["inserted"][r]), adaptive_capacity))
    return out


class _State:
    """R archives and their PRNG keys; ``arrays`` is the fixed-shape part a checkpoint stores as arrays."""

    def __init__(self, archives, keys):
        self.archives, self.keys = list(archives), np.asarray(keys)

    @property
    def arrays(self) -> dict:
        return _arrays(self.archives, self.keys)


def merge(config: M2N2Config, task: Task, seed_vectors, seeds, forward_passes: int, *, log_every: int | None = None,
          progress=False, checkpointing: Checkpointing = Checkpointing(), identity: dict | None = None) -> BaselineResult:
    """R = len(seeds) M2N2 runs over recipe archives of the input models ``seed_vectors`` [K, D]."""
    recipes.check_config(config)
    seeds = [int(s) for s in seeds]
    batch = config.children_per_step
    steps, steps_per_log = runner.plan_logging(forward_passes, batch, log_every)
    checkpointing = checkpointing.checked()
    bank = recipes.SeedBank.build(np.asarray(seed_vectors, np.float32))
    score = jax.jit(task.score_vector)
    metrics = jax.jit(task.metrics)
    buffer = np.empty(bank.size, np.float32)

    def dense(recipe):
        return jnp.asarray(bank.materialise(recipe, buffer))

    def logged_metrics(archive) -> dict:
        best = archive.best_index
        values = {k: float(v) for k, v in metrics(dense(archive.recipes[best])).items()}
        return {**values, "best_train_score": float(jnp.mean(archive.scores[best])), "inserted": archive.inserted}

    start = time.perf_counter()
    seed_scores = jnp.stack([score(jnp.asarray(v)) for v in bank.seeds])
    first = recipes.init(config, bank, seed_scores, task.capacity)
    state = _State([first] * len(seeds), np.stack([np.asarray(jax.random.PRNGKey(s)) for s in seeds]))
    history = {k: [np.asarray([v] * len(seeds), np.float32)] for k, v in logged_metrics(first).items()}
    done_logs, elapsed_before = 0, 0.0
    distributed.check_agreement(distributed.run_digests(identity or {"seeds": seeds}, task, seed_vectors))
    distributed.started()  # multi-host: processes agree on settings, seeds, models and data
    if checkpointing.resume:
        state, history, done_logs, elapsed_before = _restore(checkpointing.directory, state, identity)

    def chunk(state: _State, num_logs: int):
        archives, keys = list(state.archives), state.keys.copy()
        logged = {k: [] for k in history}
        for _ in range(num_logs):
            for r in range(len(archives)):
                key = jnp.asarray(keys[r])
                for _ in range(steps_per_log):
                    key, sub = jax.random.split(key)
                    children = recipes.ask(config, sub, bank, archives[r])
                    # multi-host: each process scores every n-th child (one all-gather per step)
                    scores = jnp.asarray(distributed.map_over_processes(lambda c: score(dense(c)), children, seed_scores[0]))
                    archives[r] = recipes.tell(config, archives[r], children, scores)
                keys[r] = np.asarray(key)
            rows = [logged_metrics(a) for a in archives]
            for k in logged:
                logged[k].append(np.asarray([row[k] for row in rows], np.float32))
        return _State(archives, keys), {k: np.stack(v) for k, v in logged.items()}

    from .evolution import _progress_bar

    # run_chunks saves a pytree of arrays; the recipes go into the checkpoint's JSON item, taken
    # from the last completed chunk (so a Ctrl-C mid-chunk saves a consistent pair).
    current = {"state": state}

    def array_chunk(_arrays_unused, num_logs):
        new_state, logged = chunk(current["state"], num_logs)
        current["state"] = new_state
        return new_state.arrays, logged

    fp_per_log = steps_per_log * batch
    num_logs = steps // steps_per_log
    bar = _progress_bar(progress, forward_passes, len(seeds), done_logs * fp_per_log)
    every = checkpointing.every
    logs_per_chunk = max(1, min(num_logs, (every or fp_per_log) // fp_per_log))
    _, wall = run_chunks(array_chunk, state.arrays, history, num_logs=num_logs, sizes=[logs_per_chunk],
                         fp_per_log=fp_per_log, forward_passes=forward_passes, bar=bar, checkpointing=checkpointing,
                         identity=identity, done_logs=done_logs, elapsed_before=elapsed_before, start=start,
                         extra_meta=lambda: {"recipes": _recipes_json(current["state"].archives)})
    state = current["state"]
    best = np.stack([bank.materialise(a.recipes[a.best_index]) for a in state.archives])
    memory = recipes.archive_memory(bank, state.archives[0])
    return BaselineResult("recipes", seeds, [i * fp_per_log for i in range(num_logs + 1)],
                          {k: np.stack(v, axis=1) for k, v in history.items()}, wall, config.to_dict(), best,
                          extra={"execution": {"archive": "recipes", "platform": jax.default_backend(),
                                               "processes": distributed.process_count()},
                                 "archive_memory": {k: (round(v, 3) if isinstance(v, float) else int(v))
                                                    for k, v in memory.items()}})


def _restore(directory: str, state: _State, identity: dict | None):
    """(state, history, done_logs, elapsed) from the newest good checkpoint."""
    checkpointer = RunCheckpointer(directory)
    try:
        restored, meta = checkpointer.restore_latest(state.arrays)
    finally:
        checkpointer.close()
    check_identity(meta["identity"], identity)
    restored = {k: np.asarray(v) for k, v in restored.items()}
    archives = _archives_from(restored, meta["recipes"], state.archives[0].adaptive_capacity)
    history = {k: [np.asarray(row, dtype=np.float32) for row in v] for k, v in meta["history"].items()}
    return _State(archives, restored["keys"]), history, int(meta["done_logs"]), float(meta["elapsed_seconds"])
