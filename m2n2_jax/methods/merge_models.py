"""Merge a user's models with M2N2: the core of ``m2n2 merge``.

The given models become the seeds of every run's archive (no mutation by
default, as the paper merges pre-trained models); the run reports the best
member by training score. :func:`describe_models` scores any models the same
way, so the inputs and the merge sit in one table.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from m2n2_jax.engine import identity
from m2n2_jax.errors import SeedModelError
from m2n2_jax.tasks.base import Task

def with_seed_models(task: Task, vectors) -> Task:
    """The task whose 'pre-trained' seeds are ``vectors`` [K, D]."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise SeedModelError(f"merging needs at least two models (got {vectors.shape[0] if vectors.ndim else 0}).")
    if vectors.shape[1] != task.num_params:
        raise SeedModelError(f"models have {vectors.shape[1]:,} parameters, the task's model {task.num_params:,}.")
    return dataclasses.replace(task, pretrained_seeds=lambda: vectors)


fingerprint = identity.fingerprint  # SHA-256 of the stacked models, so a resume with other model files is refused


def describe_models(task: Task, vectors) -> list[dict]:
    """Per model: mean training score (what the search maximises) and the task's metrics."""
    score = jax.jit(lambda x: jax.numpy.mean(task.score_vector(x)))
    metrics = jax.jit(task.metrics)
    rows = []
    for v in np.asarray(vectors):
        row = {"train_score": float(score(v))}
        row.update({k: float(m) for k, m in metrics(v).items()})
        rows.append(row)
    return rows


def best_run(final_train_scores: Sequence[float]) -> int:
    """Index of the run whose reported model scores highest on the training data (the first on ties)."""
    return int(np.argmax(np.asarray(final_train_scores)))


def table_markdown(names: Sequence[str], rows: Sequence[dict], headline: str) -> str:
    """One line per model: training score and every metric; the headline metric comes first."""
    metric_names = [headline] + sorted({k for r in rows for k in r} - {headline, "train_score"})
    metric_names = [m for m in metric_names if m != "best_train_score" and any(m in r for r in rows)]
    head = "| model | train score | " + " | ".join(m.replace("_", " ") for m in metric_names) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metric_names)]
    for name, row in zip(names, rows):
        cells = [f"{row[m]:.4f}" if m in row else "-" for m in metric_names]
        lines.append(f"| {name} | {row['train_score']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
