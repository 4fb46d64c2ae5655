"""``m2n2 compare``: run several methods on equal budgets and write one report.

Each method runs in its own process (``m2n2 evolve``), so its wall time and
peak memory (``ru_maxrss``, recorded in its results.json) are its own. The
report is ``curves.png`` (mean and standard error bands), ``table.md`` and
``results.json`` (every method's record); :func:`report` rebuilds it from
finished runs (``m2n2 compare --from``).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import Iterable, Sequence

import numpy as np

from m2n2_jax.io import results
from m2n2_jax.errors import DataError

THRESHOLDS = (0.80, 0.85)


def load_records(paths: Iterable[str]) -> list[dict]:
    """Records from method dirs (results.json with a method), report dirs (with records)
    or parents of method dirs; a path may also be a results.json file."""
    records = []
    for path in paths:
        file = path if path.endswith(".json") else os.path.join(path, "results.json")
        if os.path.isfile(file):
            with open(file) as f:
                data = json.load(f)
            if "records" in data:
                records.extend(data["records"])
            elif "method" in data and results.headline_of(data) in data:
                records.append(data)
            else:
                raise DataError(f"{file} is neither a method's results.json nor a compare report.")
            continue
        if not os.path.isdir(path):
            raise DataError(f"{path} does not exist; pass directories written by m2n2 evolve or m2n2 compare.")
        found = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "results.json")))
        if not found:
            raise DataError(f"{path} holds no results.json (nor subdirectories with one).")
        records.extend(load_records(os.path.join(path, d) for d in found))
    return records


def summary_row(rec: dict) -> dict:
    """Numbers of one method for the table."""
    fps = rec["forward_passes"]
    acc = np.asarray(rec[results.headline_of(rec)], dtype=float)
    mean, sem = results.mean_and_sem(acc)
    row = {"method": rec["method"], "init": rec.get("config", {}).get("init", "scratch"), "runs": len(rec["seeds"]),
           "seeds": f"{rec['seeds'][0]}-{rec['seeds'][-1]}", "budget": int(fps[-1]),
           "final_mean": float(mean[-1]), "final_sem": float(sem[-1]),
           "wall_seconds": rec.get("wall_seconds"), "peak_rss_mb": rec.get("peak_rss_mb")}
    for t in THRESHOLDS:
        row[f"mean_curve_fp_{t:.2f}"] = results.first_reaching(fps, mean, t)
        row[f"runs_reaching_{t:.2f}"] = int(sum(results.first_reaching(fps, c, t) is not None for c in acc))
    return row


def _fmt(value, fmt="{:.0f}", none="-"):
    return none if value is None else fmt.format(value)


def table_markdown(records: Sequence[dict]) -> str:
    headline = "/".join(sorted({results.headline_of(r) for r in records})).replace("_", " ")
    lines = [f"| method | init | runs (seeds) | budget (fp) | final {headline} (mean ± se) | fp to 0.80 | fp to 0.85 "
             "| wall s | peak RSS MB |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for rec in records:
        r = summary_row(rec)
        reach = [f"{_fmt(r[f'mean_curve_fp_{t:.2f}'])} ({r[f'runs_reaching_{t:.2f}']}/{r['runs']})" for t in THRESHOLDS]
        lines.append(f"| {r['method']} | {r['init']} | {r['runs']} ({r['seeds']}) | {r['budget']} | "
                     f"{r['final_mean']:.4f} ± {r['final_sem']:.4f} | {reach[0]} | {reach[1]} | "
                     f"{_fmt(r['wall_seconds'])} | {_fmt(r['peak_rss_mb'])} |")
    lines += ["", "fp to 0.80 / 0.85: first logged forward pass at which the mean curve reaches the accuracy "
              "(in brackets: runs whose own curve reaches it). Test accuracy is that of each run's reported model "
              "(highest training accuracy). Wall seconds include compilation; peak RSS is the method's own process."]
    return "\n".join(lines) + "\n"


def report(records: Sequence[dict], out: str, *, command: str | None = None, title: str | None = None) -> dict:
    """Write out/curves.png, out/table.md and out/results.json; returns the report."""
    if not records:
        raise DataError("no results to report.")
    os.makedirs(out, exist_ok=True)
    results.plot_curves(os.path.join(out, "curves.png"), records, title=title)
    table = table_markdown(records)
    header = f"# {title or 'comparison'}\n\n" + (f"Regenerate with:\n\n```bash\n{command}\n```\n\n" if command else "")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(header + table)
    data = {"command": command, "table": [summary_row(r) for r in records], "records": list(records)}
    results.write_json(os.path.join(out, "results.json"), data)
    return data


def package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evolve_command(method: str, out: str, *, task: str, runs: int, seed: int, forward_passes: int | None,
                   init: str, extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "m2n2_jax", "evolve", "--task", task, "--method", method, "--runs", str(runs),
           "--seed", str(seed), "--init", init, "--out", out, "--overwrite", "--quiet", *extra]
    if forward_passes is not None:
        cmd += ["--forward-passes", str(forward_passes)]
    return cmd


def run_all(methods: Sequence[str], out: str, *, task: str, runs: int, seed: int, forward_passes: int | None,
            init: str, extra: Sequence[str] = (), log=print) -> list[dict]:
    """Run every method in its own process into out/METHOD; returns their records."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root(), os.environ.get("PYTHONPATH")]))}
    records = []
    for method in methods:
        method_out = os.path.join(out, method)
        cmd = evolve_command(method, method_out, task=task, runs=runs, seed=seed, forward_passes=forward_passes,
                             init=init, extra=extra)
        log(f"m2n2 compare: {method} ... ({shlex.join(cmd[1:])})")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"{method} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        records.extend(load_records([method_out]))
        log(f"  final test accuracy {records[-1]['final_mean']:.4f} ± {records[-1]['final_sem']:.4f}, "
            f"{records[-1]['wall_seconds']:.0f} s")
    return records
