"""A run's identity: what a checkpoint must agree on to be resumed, built one way for every method.

Every family (the dense M2N2 engine, the recipe archive, the evosax
strategies, MAP-Elites) saves :func:`run_identity` in its checkpoints and
refuses, in one line, to resume one whose identity differs
(:func:`check`). The identity holds the method's config, the task's name,
the run seeds, the budget and log interval, the archive kind, a fingerprint
of the input models, a fingerprint of the data and the caller's settings (the
CLI's options). The data fingerprint covers what the score function sees: the
scores of the given input models (already computed by the run) or, from
scratch, of one fixed probe model (a random seed from PRNGKey(0)); the
capacities and labels; and the contents of every file the task names in its
``info`` (a JSONL data set, say), so a data file edited between the start and
the resume is noticed even when the scores do not change. Scores are float
results: a checkpoint resumed on another kind of CPU may be refused for them.
"""
from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from m2n2_jax.errors import ConfigError

# Fields whose difference has a plainer explanation than "checkpoint X, now Y".
_EXPLAINED = {
    "inputs": "the input models changed since the run started (put the original files back)",
    "data": "the task's data changed since the run started (put the original data back)",
}


def fingerprint(vectors) -> str:
    """SHA-256 of stacked flat models (as float32)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(vectors, np.float32)).tobytes()).hexdigest()


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(task, inputs=None, start_scores=None) -> str:
    """SHA-256 of the data as the task's score function sees it (see the module docstring).

    start_scores: scores the run already has of its start models (the inputs or its seeds),
    used instead of scoring a probe model, which would cost a forward pass (and a compile).
    """
    from m2n2_jax.engine.distributed import digest

    if start_scores is None:
        probe = jax.numpy.asarray(inputs[0]) if inputs is not None else task.random_seed(jax.random.PRNGKey(0))
        start_scores = jax.jit(task.score_vector)(probe)
    seen = [task.num_datapoints, start_scores, task.capacity, task.train_labels]
    files = {k: _file_digest(v) for k, v in sorted((task.info or {}).items())
             if isinstance(v, str) and os.path.isfile(v)}
    return digest({"seen": [None if x is None else np.asarray(x) for x in jax.tree.leaves(seen)], "files": files})


def run_identity(config: dict, task, seeds, forward_passes: int, log_every: int | None, inputs=None,
                 settings: dict | None = None, archive: str = "dense", start_scores=None) -> dict:
    """What a checkpoint of this run must agree on to be resumed (JSON-serialisable).

    config: the method's settings as a dict; inputs: the given models [K, D] (None: drawn
    from scratch); settings: the caller's own (CLI options and the like), merged in last;
    start_scores: see :func:`data_fingerprint`.
    """
    return {"config": config, "task": task.name, "seeds": [int(s) for s in seeds],
            "forward_passes": int(forward_passes), "log_every": None if log_every is None else int(log_every),
            "archive": archive, "inputs": "random seeds" if inputs is None else fingerprint(inputs),
            "data": data_fingerprint(task, inputs, start_scores), **(settings or {})}


def differing_fields(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields on which two identities differ, with both values or an explanation."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            name = f"{prefix}{key}"
            out.append(_EXPLAINED.get(name, f"{name} (checkpoint {a!r}, now {b!r})"))
    return out


def check(saved: dict, current: dict) -> None:
    """Refuse in one line, naming the fields, to resume a checkpoint of another run."""
    diff = differing_fields(saved, current)
    if diff:
        raise ConfigError("the checkpoint was made with different settings: " + "; ".join(diff) +
                          ". Resume with the original settings, or start a new run in another --out.")
