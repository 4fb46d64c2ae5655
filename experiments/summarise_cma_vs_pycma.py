"""summary.md and paths.png from the runs of experiments/cma_es_vs_pycma.py in one folder.

With KEEP_MEANS set to the folder where the runs saved their means (not committed: 77 kB
per generation), the distance between the evosax and the shared-noise pycma mean is
computed per generation and kept in shared_noise_means.json.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np


def _load(out):
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*_seed*.json"))):
        with open(path) as f:
            rec = json.load(f)
        runs[(rec["impl"], rec["seed"])] = rec
    return runs


def _mean_distances(out, seed, generations, shared="pycma-shared"):
    keep = os.environ.get("KEEP_MEANS")
    path = os.path.join(out, "shared_noise_means.json")
    if keep:
        rows = []
        for g in range(generations):
            a = os.path.join(keep, f"evosax_seed{seed}_gen{g}.npy")
            b = os.path.join(keep, f"{shared}_seed{seed}_gen{g}.npy")
            if not (os.path.exists(a) and os.path.exists(b)):
                break
            ma, mb = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
            rows.append({"generation": g + 1, "mean_distance": float(np.linalg.norm(ma - mb)),
                         "max_abs_coordinate_difference": float(np.max(np.abs(ma - mb)))})
        with open(path, "w") as f:
            json.dump({"seed": seed, "against": shared, "rows": rows}, f, indent=1)
    if os.path.exists(path):
        with open(path) as f:
            return {r["generation"]: r for r in json.load(f)["rows"]}
    return {}


def summarise(out: str) -> None:
    runs = _load(out)
    seeds = sorted({s for _, s in runs})
    lines = ["# Full CMA-ES: the project's evosax strategy against pycma (the authors' CMA-ES)", "",
             "Digits task, D = 19,210, population 20, sigma 0.01, the same start point "
             "(the project's N(0, 0.01^2) draw for the seed), fitness = training accuracy "
             "(`task.score_vector`, float32) for both. Made by `experiments/cma_es_vs_pycma.py`; "
             "commands in each JSON file. `pycma-shared`: pycma fed the evosax run's threefry "
             "normal draws through its `randn` option.", ""]
    ev = next((r for (i, _), r in runs.items() if i == "evosax"), None)
    py = next((r for (i, _), r in runs.items() if i.startswith("pycma") and "constants" in r), None)
    if ev and py:
        e, p = ev["constants"], py["constants"]
        we, wp = np.asarray(e["weights"]), np.asarray(p["weights"])
        lines += ["## Constants at D = 19,210", "",
                  "| quantity | evosax (project) | pycma |", "|---|---:|---:|",
                  f"| c_sigma / cs | {e['c_std']:.6g} | {p['cs']:.6g} |",
                  f"| d_sigma / damps | {e['d_std']:.6g} | {p['damps']:.6g} |",
                  f"| c_c / cc | {e['c_c']:.6g} | {p['cc']:.6g} |",
                  f"| c_1 / c1 | {e['c_1']:.6g} | {p['c1']:.6g} |",
                  f"| c_mu / cmu | {e['c_mu']:.6g} | {p['cmu']:.6g} |",
                  f"| mu_eff | {e['mu_eff']:.6g} | {p['mueff']:.6g} |",
                  f"| chi_n | {e['chi_n']:.6g} | {p['chiN']:.6g} |",
                  f"| positive weights (max abs difference) | {np.max(np.abs(we[we > 0] - wp[wp > 0])):.2g} | |",
                  f"| negative weights (sum) | {we[we < 0].sum():.4g} | {wp[wp < 0].sum():.4g} |",
                  f"| generations between eigendecompositions | {ev['eigen_every']} | "
                  f"{p['lazy_update_gap']:.1f} |", "",
                  f"pycma constants from the `{py['impl']}` run (with the covariance frozen, its c_1, c_mu and "
                  "negative weights are 0 and it never decomposes; full pycma uses the same lazy-gap rule as evosax).", ""]
    for seed in seeds:
        rs = {i: runs[(i, s)] for (i, s) in runs if s == seed}
        impls = [i for i in ("evosax", "pycma-shared", "pycma-shared-diag", "pycma") if i in rs]
        shared = next((i for i in ("pycma-shared", "pycma-shared-diag") if i in rs), None)
        dist = _mean_distances(out, seed, max(len(r["rows"]) for r in rs.values()), shared or "pycma-shared")
        lines += [f"## Seed {seed}: per generation", "",
                  "sigma, |mean - start| and the best training accuracy of the generation; "
                  f"`same accuracies`: the 20 accuracies of evosax and {shared} are equal "
                  f"as a list; `mean gap`: |m_evosax - m_{shared}|.", ""]
        head = "| gen | " + " | ".join(f"sigma {i}" for i in impls) + " | " + \
               " | ".join(f"shift {i}" for i in impls) + " | " + " | ".join(f"best {i}" for i in impls)
        extra = " | same accuracies | mean gap |" if shared and "evosax" in rs else " |"
        lines += [head + extra, "|" + "---:|" * (1 + 3 * len(impls) + (2 if extra != " |" else 0))]
        n = max(len(r["rows"]) for r in rs.values())
        for g in range(n):
            row = {i: rs[i]["rows"][g] if g < len(rs[i]["rows"]) else None for i in impls}
            cell = lambda i, k, f: "-" if row[i] is None else format(row[i][k], f)
            cells = [cell(i, "sigma", ".7f") for i in impls] + [cell(i, "mean_shift", ".5f") for i in impls] + \
                    [cell(i, "best_accuracy", ".4f") for i in impls]
            if extra != " |" and row["evosax"] is not None and row[shared] is not None:
                same = row["evosax"]["accuracies"] == row[shared]["accuracies"]
                gap = dist.get(g + 1, {}).get("mean_distance")
                cells += ["yes" if same else "no", "-" if gap is None else f"{gap:.2e}"]
            elif extra != " |":
                cells += ["-", "-"]
            lines.append(f"| {g + 1} | " + " | ".join(cells) + " |")
        secs = {i: np.median([r["seconds"] for r in rs[i]["rows"][1:]]) for i in impls}
        lines += ["", "Median seconds per generation (after the first): " +
                  ", ".join(f"{i} {secs[i]:.1f} s" for i in impls) + f" ({rs[impls[0]].get('machine', '')}, "
                  "shared 2-core CPU under load).", ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    _plot(out, runs)


def _plot(out, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for (impl, seed), rec in sorted(runs.items()):
        g = [r["generation"] for r in rec["rows"]]
        style = {"evosax": "-", "pycma-shared": "--", "pycma-shared-diag": "-.", "pycma": ":"}[impl]
        for ax, key in zip(axes, ("sigma", "mean_shift", "best_accuracy")):
            ax.plot(g, [r[key] for r in rec["rows"]], style, label=f"{impl} seed {seed}")
    for ax, title in zip(axes, ("step size sigma", "|mean - start|", "best training accuracy of the generation")):
        ax.set_title(title)
        ax.set_xlabel("generation")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "paths.png"), dpi=110)


if __name__ == "__main__":
    import sys

    summarise(sys.argv[1] if len(sys.argv) > 1 else "docs/results/digits-baselines-from-scratch/cma-es-vs-pycma")
