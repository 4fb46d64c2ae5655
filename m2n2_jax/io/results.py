"""Result files: results.json, curves.png and Markdown tables.

Curves are summarised as mean and standard error over runs (the paper's
figure style); standard error = sample std (ddof=1) / sqrt(runs).
"""
from __future__ import annotations

import json
import math
import os
import platform
from typing import Sequence

import numpy as np


def mean_and_sem(curves) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over runs of curves [R, L]."""
    curves = np.asarray(curves, dtype=float)
    mean = curves.mean(axis=0)
    if curves.shape[0] < 2:
        return mean, np.zeros_like(mean)
    return mean, curves.std(axis=0, ddof=1) / math.sqrt(curves.shape[0])


def first_reaching(forward_passes: Sequence[int], curve: Sequence[float], threshold: float):
    """The first logged forward pass at which ``curve`` >= threshold, or None."""
    for fp, value in zip(forward_passes, curve):
        if value >= threshold:
            return int(fp)
    return None


def value_at(forward_passes: Sequence[int], curves, fp: int) -> np.ndarray:
    """Per-run value at the last logged point <= fp."""
    idx = np.searchsorted(np.asarray(forward_passes), fp, side="right") - 1
    if idx < 0:
        raise ValueError(f"no logged point at or before {fp} forward passes")
    return np.asarray(curves)[:, idx]


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as one line ("Intel(R) Xeon(R) Processor (model 167; avx512_bf16, amx_bf16)"): float32
    results and speeds depend on it, so every record names it. Falls back to platform.processor()."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = [f for f in ("avx512_bf16", "amx_bf16") if f in fields.get("flags", "").split()]
    detail = "; ".join(part for part in (f"model {fields['model']}" if fields.get("model") else "",
                                         ", ".join(flags)) if part)
    return f"{name} ({detail})" if detail else name


def environment() -> dict:
    import jax

    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
            "machine": platform.machine(), "cpu": cpu_description(), "cpu_count": os.cpu_count()}


def headline_of(record: dict) -> str:
    """The metric a record leads with (older records and the built-in tasks: test accuracy)."""
    return record.get("headline_metric", "test_accuracy")


def results_record(*, method: str, task: str, seeds, forward_passes, metrics: dict, wall_seconds: float,
                   config: dict, extra: dict | None = None, headline: str = "test_accuracy") -> dict:
    """The results.json record of one method (curves aligned with forward_passes).

    ``headline`` names the metric summarised as final value, mean and standard
    error; with the default the fields are ``final_test_accuracy``,
    ``mean_test_accuracy`` and so on, and the forward passes at which each run
    first reaches 0.80 and 0.85 are added.
    """
    if headline not in metrics:
        raise ValueError(f"headline metric {headline!r} is not among the logged metrics {sorted(metrics)}")
    acc = np.asarray(metrics[headline], dtype=float)
    mean, sem = mean_and_sem(acc)
    total_fp = int(forward_passes[-1]) * len(seeds)
    record = {
        "method": method,
        "task": task,
        "seeds": [int(s) for s in seeds],
        "forward_passes": [int(f) for f in forward_passes],
        "headline_metric": headline,
        headline: _rounded(acc),
        f"final_{headline}": _rounded(acc[:, -1]),
        f"mean_{headline}": _rounded(mean),
        f"sem_{headline}": _rounded(sem),
        "final_mean": round(float(mean[-1]), 6),
        "final_sem": round(float(sem[-1]), 6),
    }
    if headline == "test_accuracy":
        record["first_fp_reaching_0.80"] = [first_reaching(forward_passes, c, 0.80) for c in acc]
        record["first_fp_reaching_0.85"] = [first_reaching(forward_passes, c, 0.85) for c in acc]
    record.update({
        "wall_seconds": round(float(wall_seconds), 3),
        "forward_passes_per_second": round(total_fp / max(wall_seconds, 1e-9), 1),
        "config": config,
        "environment": environment(),
    })
    for name, values in metrics.items():
        if name != headline:
            record[name] = _rounded(np.asarray(values, dtype=float))
    record.update(extra or {})
    return record


def _rounded(a, digits: int = 6):
    return np.round(np.asarray(a, dtype=float), digits).tolist()


def dumps_record(record: dict) -> str:
    """JSON with one top-level field per line: readable, diffable and compact (curves stay on one line)."""
    items = [f"  {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in record.items()]
    return "{\n" + ",\n".join(items) + "\n}\n"


def write_json(path: str, record: dict) -> None:
    """Write atomically (a crash never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(dumps_record(record))
    os.replace(tmp, path)


def plot_curves(path: str, records: Sequence[dict], title: str | None = None,
                references: dict[str, float] | None = None) -> None:
    """The headline metric against forward passes: mean line, standard-error band per method;
    ``references`` adds dashed horizontal lines (e.g. the models a merge started from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    budgets = {rec["forward_passes"][-1] for rec in records}
    for rec in records:
        fps = np.asarray(rec["forward_passes"])
        mean, sem = mean_and_sem(rec[headline_of(rec)])
        budget = f" at {fps[-1]:,} fp" if len(budgets) > 1 else ""  # say so when budgets differ
        line, = ax.plot(fps, mean, label=f"{rec['method']} ({mean[-1]:.3f}{budget})", lw=1.6)
        ax.fill_between(fps, mean - sem, mean + sem, color=line.get_color(), alpha=0.2, lw=0)
    for (label, value), style in zip((references or {}).items(), ("--", ":", "-.") * 10):
        ax.axhline(value, color="gray", ls=style, lw=1.1, label=f"{label} ({value:.3f})")
    runs = {len(r["seeds"]) for r in records}
    ax.set_xlabel("forward passes")
    headlines = {headline_of(r) for r in records}
    ax.set_ylabel(f"{'/'.join(sorted(headlines)).replace('_', ' ')} (best training member)")
    counts = "/".join(map(str, sorted(runs)))
    ax.set_title(title or (f"{records[0]['task']}: one run" if runs == {1} else
                           f"{records[0]['task']}: mean ± standard error over {counts} runs"))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
