"""The model a merge reports: its best child, or its best input when no child beats that.

A merge must never hand back something worse than what it was given, nor a
near-copy of an input that only rounding tells apart from it (a model merged
with itself must come back unchanged). So each run's reported model is
compared, by mean training score (the score the search maximises, summed in
float64), with the best input: unless it scores strictly higher, the run
reports that input itself, bit for bit. Ties between inputs go to the first
(lowest index). The decision is recorded per run in ``extra["reported"]``, so
results.json says which model was written and why.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from m2n2_jax.engine.chunk_loop import RunResult
from m2n2_jax.tasks.base import Task


def train_scores(task: Task, vectors) -> np.ndarray:
    """Mean training score [M] of each flat model in ``vectors`` [M, D] (summed in float64 on the host)."""
    score = jax.jit(task.score_vector)
    return np.asarray([np.mean(np.asarray(score(v), np.float64)) for v in np.asarray(vectors)])


def choose(run_scores, input_scores) -> list[int | None]:
    """Per run, the input to report instead of the run's model (None: the run's model beats every input).

    A run's model must score strictly higher than the best input; ties between inputs go to the lowest index.
    """
    best_input = int(np.argmax(np.asarray(input_scores)))
    top = float(np.asarray(input_scores)[best_input])
    return [None if float(s) > top else best_input for s in np.asarray(run_scores)]


def keep_best_input(result: RunResult, task: Task, inputs) -> RunResult:
    """``result`` whose runs report the best of ``inputs`` [K, D] wherever no child beats it."""
    inputs = np.asarray(inputs)
    run_scores, input_scores = train_scores(task, result.best), train_scores(task, inputs)
    picks = choose(run_scores, input_scores)
    best = np.stack([result.best[r] if k is None else inputs[k].astype(result.best.dtype)
                     for r, k in enumerate(picks)])
    top = int(np.argmax(input_scores))
    reported = [{"run": r, "model": "merge" if k is None else f"input {k}",
                 "train_score": float(run_scores[r] if k is None else input_scores[k]),
                 "best_input": top, "best_input_train_score": float(input_scores[top]),
                 "why": ("it beats the best input's train score" if k is None else
                         f"no child beats the best input's train score ({float(run_scores[r]):.6g} <= "
                         f"{float(input_scores[top]):.6g}): the input is returned unchanged")}
                for r, k in enumerate(picks)]
    return dataclasses.replace(result, best=best, extra={**result.extra, "reported": reported})
