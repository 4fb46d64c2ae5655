"""Our MAP-Elites (engine key order) against the authors' code on the same fresh seeds.

Reads the authors' per-seed curves (experiments/authors_map_elites_seeds.py output) and one
``m2n2 evolve --method map-elites`` results.json, and writes to OUT:
  authors_curves.json  the authors' test accuracy every 10 children per seed (numbers only)
  summary.md           mean ± standard error of both at common checkpoints, over the seeds
                       that both have, and the gap in combined standard errors
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np


def mean_se(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def main(authors_dir: str, ours_results: str, out: str) -> None:
    authors = {}
    for path in sorted(glob.glob(os.path.join(authors_dir, "map_elites_seed*_*.json"))):
        with open(path) as f:
            rec = json.load(f)
        seed = rec["seed"]
        if seed != 42 and len(rec["test_accuracy"]) > len(authors.get(seed, {}).get("test_accuracy", [])):
            authors[seed] = rec  # the longest run of each seed
    with open(ours_results) as f:
        ours = json.load(f)
    fps = ours["forward_passes"]
    # Compare over the seeds whose authors' run reaches the longest budget run (and ours has).
    horizon = min(max(len(authors[s]["test_accuracy"]) for s in ours["seeds"] if s in authors), fps[-1])
    seeds = [s for s in ours["seeds"] if s in authors and len(authors[s]["test_accuracy"]) >= horizon]
    points = [p for p in (500, 1000, 2000, 3000, 5000, 10000, 20000, 30000, 40000, 50000)
              if p <= horizon and p in fps]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "authors_curves.json"), "w") as f:
        json.dump({"about": "Authors' MAP-Elites (SakanaAI/natural_niches 3b90342, unchanged) from scratch on this "
                            "project's machine (Intel Xeon, AVX512-BF16/AMX, CPU backend, jax 0.10.2), made with "
                            "experiments/authors_map_elites_seeds.py. test_accuracy[k] is the test accuracy of the "
                            "best elite after 10 (k + 1) children.",
                   "curves": {str(s): {"forward_passes": authors[s]["forward_passes"],
                                       "test_accuracy_every_10": authors[s]["test_accuracy"][9::10],
                                       "seconds": round(authors[s]["seconds"])} for s in sorted(authors)}}, f)
    lines = [f"# MAP-Elites from scratch: this project (engine key order) and the authors' code, seeds "
             f"{', '.join(map(str, seeds))}", "",
             f"Ours: `{ours_results}` ({ours['config'].get('key_order', 'engine')} key order). Authors': "
             "`authors_curves.json` here. Test accuracy of the best elite, mean ± standard error over the "
             f"{len(seeds)} seeds both have; gap = (ours - authors) / sqrt(se_ours^2 + se_authors^2).", "",
             "| forward passes | ours | authors' code | gap (combined se) |", "|---:|---:|---:|---:|"]
    ours_acc = np.asarray(ours["test_accuracy"])  # [R, L]
    rows = {s: i for i, s in enumerate(ours["seeds"])}
    for p in points:
        a = mean_se([authors[s]["test_accuracy"][p - 1] for s in seeds])
        o = mean_se([ours_acc[rows[s], fps.index(p)] for s in seeds])
        gap = (o[0] - a[0]) / np.hypot(o[1], a[1])
        lines.append(f"| {p} | {o[0]:.4f} ± {o[1]:.4f} | {a[0]:.4f} ± {a[1]:.4f} | {gap:+.2f} |")
    lines += ["", "Per seed at the last common point "
              f"({points[-1]}): " + ", ".join(
                  f"{s}: ours {ours_acc[rows[s], fps.index(points[-1])]:.3f} / authors "
                  f"{authors[s]['test_accuracy'][points[-1] - 1]:.3f}" for s in seeds), ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:4])
