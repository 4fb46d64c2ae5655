"""Write every results table of README.md and docs/*.md from the committed results files.

    python experiments/make_tables.py           # rewrite the tables in place
    python experiments/make_tables.py --check   # exit 1 if a committed table differs

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in a
Markdown file; NAME is a key of TABLES below, whose function reads
docs/results/**/results.json (and the authors' anchors in tests/data) and returns
the Markdown. Tables are regenerated, never typed, so they cannot drift from
the results. Each table ends with a line naming its files and the CPU they were
measured on: results.json files record it (``environment.cpu``) since the CPU
was added to them; older files, which lack it, all came from the AMD EPYC of
earlier sessions.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import re
import sys

import numpy as np

from m2n2_jax.io import compare
from m2n2_jax.io import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESULTS = "docs/results"
ANCHORS = "tests/data/reference_digits.json"
EARLIER_CPU = "AMD EPYC (earlier session)"
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
MARK = re.compile(r"<!-- table:([\w.-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)
CHECKPOINTS = (5000, 10000, 20000, 50000)


def load(path: str) -> dict:
    full = os.path.join(ROOT, path)
    if os.path.isdir(full):
        full = os.path.join(full, "results.json")
    with open(full) as f:
        return json.load(f)


def cpu_of(record: dict) -> str:
    """The CPU a results file was measured on; files without the field predate it (earlier sessions)."""
    return (record.get("environment") or {}).get("cpu") or EARLIER_CPU


def source_line(paths: list[str], records: list[dict], extra: str = "") -> str:
    cpus = sorted({cpu_of(r) for r in records})
    files = ", ".join(f"`{p}`" for p in paths)
    return f"Source: {files}; measured on {' and '.join(cpus)}.{(' ' + extra) if extra else ''}"


def mean_sem_at(record: dict, fp: int) -> tuple[float, float]:
    mean, sem = results.mean_and_sem(results.value_at(record["forward_passes"], record["test_accuracy"], fp)[:, None])
    return float(mean[0]), float(sem[0])


def digits_from_scratch() -> str:
    """README: M2N2, its ablations and GA from scratch at 5k-50k, with the authors' code on fresh seeds."""
    base = f"{RESULTS}/digits-from-scratch"
    rows = [("M2N2, 20 fresh seeds (100-119)", "m2n2-seeds100-119"), ("authors' code, same 20 seeds", None),
            ("M2N2, seeds 42-51", "m2n2"), ("M2N2 without crossover", "m2n2-no-crossover"),
            ("GA without crossover", "ga-no-crossover"), ("GA (alpha 0, no attraction)", "ga")]
    ref = load(ANCHORS)["runs"]["natural_niches_fresh_seeds_100_119"]
    lines = ["| | " + " | ".join(f"{fp // 1000}k" for fp in CHECKPOINTS) + " |",
             "|---|" + "---:|" * len(CHECKPOINTS)]
    records, paths = [], []
    for label, name in rows:
        if name is None:
            cells = []
            for fp in CHECKPOINTS:
                i = ref["forward_passes"].index(fp)
                cells.append(f"{ref['mean_test_accuracy'][i]:.3f} ± {ref['standard_error'][i]:.3f}")
        else:
            rec = load(f"{base}/{name}")
            records.append(rec)
            paths.append(f"{base}/{name}")
            cells = ["{:.3f} ± {:.3f}".format(*mean_sem_at(rec, fp)) for fp in CHECKPOINTS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # MAP-Elites (issue 16): seeds 42-51 at 50k, and short fresh-seed runs next to the authors' code
    me = f"{RESULTS}/digits-baselines-from-scratch"
    for label, name in [("MAP-Elites (the authors' procedure), seeds 42-51", "map-elites"),
                        ("MAP-Elites (the authors' procedure), 10 fresh seeds (100-109)", "map-elites-seeds-100-109")]:
        rec = load(f"{me}/{name}")
        records.append(rec)
        paths.append(f"{me}/{name}")
        cells = ["{:.3f} ± {:.3f}".format(*mean_sem_at(rec, fp)) if fp <= rec["forward_passes"][-1] else ""
                 for fp in CHECKPOINTS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    authors = load(f"{me}/map-elites-vs-authors/authors_curves.json")["curves"]
    cells = []
    for fp in CHECKPOINTS:
        curves = [c["test_accuracy_every_10"] for c in authors.values() if c["forward_passes"] >= fp]
        if len(curves) < len(authors):
            cells.append("")
            continue
        mean, sem = results.mean_and_sem(np.asarray([[c[fp // 10 - 1] for c in curves]], np.float64).T)
        cells.append(f"{float(mean[0]):.3f} ± {float(sem[0]):.3f}")
    lines.append(f"| authors' MAP-Elites code, same 10 fresh seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", source_line([f"{base}/*/results.json", f"{me}/map-elites*/"], records,
                                              f"Authors' code: `{ANCHORS}`, "
                                              f"`{me}/map-elites-vs-authors/authors_curves.json`.")])


def bench() -> str:
    """README: forward passes per second of each bench setting, float32 and bf16 side by side."""
    path = f"{RESULTS}/bench/bench.json"
    data = load(path)
    speed, loop = data["forward_passes_per_second"], None
    table: dict[str, dict[str, float]] = {}
    for name, value in speed.items():
        if name.startswith("per-child"):
            loop = value
        precision = data["matmul_precision"][name]
        label = name.replace(", bf16 scoring", "").removeprefix("engine, ")
        table.setdefault(label, {})[precision] = value
    lines = ["| setting | float32 scoring | bfloat16 scoring |", "|---|---:|---:|"]
    for label, cols in table.items():
        cells = [f"{cols[p]:,.0f} ({cols[p] / loop:.1f}x)" if p in cols else "" for p in ("float32", "bfloat16")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ceiling = data["flop_ceiling_fp_per_s"]
    note = (f"Ratios are to the per-child loop. FLOP ceiling of that CPU: {ceiling['float32']:,.0f} (float32) and "
            f"{ceiling['bfloat16']:,.0f} (bfloat16) forward passes per second.")
    return "\n".join(lines + ["", source_line([path], [data], note)])


def diffusion() -> str:
    """README: held-out quality per prompt language, consistency and FID of every diffusion model."""
    path = f"{RESULTS}/diffusion-merge/results.json"
    data = load(path)
    cols = [("accuracy_japanese", "similarity_japanese"), ("accuracy_english", "similarity_english"),
            ("consistency",), ("fid_japanese",)]

    def cell(row, key):
        runs = row.get("per_run") or []
        if len(runs) > 1:
            values = np.asarray([[r[key] for r in runs]], np.float64).T
            mean, sem = results.mean_and_sem(values)
            return f"{float(mean[0]):.3f} ± {float(sem[0]):.3f}" if not key.startswith("fid") else \
                f"{float(mean[0]):.1f} ± {float(sem[0]):.1f}"
        return f"{row[key]:.1f}" if key.startswith("fid") else f"{row[key]:.3f}"

    lines = ["| model | Japanese accuracy / similarity | English accuracy / similarity | consistency | FID (JA) |",
             "|---|---|---|---|---|"]
    for name, row in data["rows"].items():
        runs = len(row.get("per_run") or [])
        what = {"merge": f" ({row.get('runs', 1)} runs of {row.get('forward_passes', 0):,} fp)",
                "baseline": f" ({runs} runs of {row.get('evaluations', 0):,} evaluations)" if runs > 1 else "",
                "seed": ""}.get(row["kind"], "")
        if row["kind"] not in ("merge", "baseline", "seed"):
            continue
        cells = [" / ".join(cell(row, k) for k in group) for group in cols]
        lines.append(f"| {name}{what} | " + " | ".join(cells) + " |")
    note = ("Held-out captions and noise; the encoder is each seed's own for seed rows and the Japanese "
            "seed's for merges and baselines; merges and CMA-ES: mean ± standard error over runs.")
    return "\n".join(lines + ["", source_line([path], [data], note)])


def llm_merge() -> str:
    """README: held-out exact match of every LLM merge, without and with replay during fine-tuning."""
    paths = [f"{RESULTS}/llm-merge/results.json", f"{RESULTS}/llm-merge-replay/results.json"]
    runs = [load(p) for p in paths]
    names = list(dict.fromkeys(n for r in runs for n in r["methods"]))
    lines = ["| method | no replay: math / agent (average) | replay 0.5: math / agent (average) |",
             "|---|---:|---:|"]
    for name in names:
        cells = []
        for run in runs:
            m = run["methods"].get(name)
            cells.append(f"{m['math']:.3f} / {m['agent']:.3f} ({m['average']:.3f})" if m else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", source_line(paths, runs, "One seed (0) each; see the spread below.")])


def llm_seeds() -> str:
    """README: the default LLM experiment on several seeds (how fragile the toy result is)."""
    paths = sorted(glob.glob(os.path.join(ROOT, RESULTS, "llm-merge-seeds", "seed*", "results.json")))
    if not paths:
        return "(no seed runs committed)"
    runs = [json.load(open(p)) for p in paths]
    shown = ["math specialist", "agent specialist", "SLERP (best ratio)", "CMA-ES (per-tensor)", "m2n2"]
    lines = ["| seed | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for run in runs:
        cells = [f"{run['methods'][n]['math']:.3f} / {run['methods'][n]['agent']:.3f} "
                 f"({run['methods'][n]['average']:.3f})" for n in shown]
        lines.append(f"| {run['settings']['seed']} | " + " | ".join(cells) + " |")
    avg = np.array([[r["methods"][n]["average"] for n in shown] for r in runs])
    sem = avg.std(axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(len(shown))
    lines.append("| mean ± se of the average | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in
                                                          zip(avg.mean(axis=0), sem)) + " |")
    rel = [os.path.relpath(p, ROOT) for p in paths]
    return "\n".join(lines + ["", source_line(rel, runs, "Cells: held-out exact match, math / agent (average).")])


def pretrained() -> str:
    """docs/baselines.md: merging the pre-trained pair, with the paper's figure and the authors' code."""
    path = f"{RESULTS}/digits-from-pretrained"
    records = compare.load_records([path])
    anchors = load(ANCHORS)["runs"]
    # Read off the paper's figure (not a results file): Abrantes et al. 2025, pre-trained digits at 10k.
    paper = {"m2n2": "~0.685", "m2n2-no-attraction": "~0.66", "m2n2-no-split-point": "0.52-0.58",
             "map-elites": "~0.62", "ga": "0.52-0.58", "brute-force": "~0.577"}
    ref_nn = anchors["natural_niches_pre_trained"]
    authors = {"m2n2": f"{ref_nn['mean_test_accuracy'][-1]:.4f} (seeds {ref_nn['seeds'][0]}-{ref_nn['seeds'][-1]})",
               "brute-force": f"{anchors['brute_force_pre_trained']['test_accuracy']:.4f} "
                              f"(t = {anchors['brute_force_pre_trained']['best_slerp_ratio']})"}
    lines = ["| method | final test accuracy (mean ± se) | paper (figure) | authors' code here |",
             "|---|---:|---:|---:|"]
    for rec in records:
        row = compare.summary_row(rec)
        name = row["method"]
        label = f"{name} (best of {rec['config']['ratios']:,} ratios, t = {rec['best_ratio']})" \
            if name == "brute-force" else name
        value = f"{row['final_mean']:.4f}" if name == "brute-force" else f"{row['final_mean']:.4f} ± {row['final_sem']:.4f}"
        lines.append(f"| {label} | {value} | {paper.get(name, '')} | {authors.get(name, '')} |")
    return "\n".join(lines + ["", source_line([f"{path}/*/results.json"], records,
                                              f"Authors' code: `{ANCHORS}`.")])


def vs_baselines_from_scratch() -> str:
    """docs/baselines.md: every method from scratch, from the committed compare report."""
    path = f"{RESULTS}/digits-vs-baselines-from-scratch"
    records = compare.load_records([path])
    return compare.table_markdown(records).rstrip("\n") + "\n\n" + source_line([f"{path}/results.json"], records)


def mnist5k() -> str:
    """docs/mnist.md: test accuracy of the mnist5k run against forward passes."""
    path = f"{RESULTS}/mnist5k-m2n2"
    rec = load(path)
    lines = ["| forward passes | test accuracy (mean ± se) | per run |", "|---:|---:|---|"]
    for fp in (0, 1000, 2000, 5000, rec["forward_passes"][-1]):
        mean, sem = mean_sem_at(rec, fp)
        runs = results.value_at(rec["forward_passes"], rec["test_accuracy"], fp)
        lines.append(f"| {fp:,} | {mean:.3f} ± {sem:.3f} | {' / '.join(f'{v:.3f}' for v in runs)} |")
    note = (f"{len(rec['seeds'])} runs (seeds {rec['seeds'][0]}-{rec['seeds'][-1]}), wall time "
            f"{rec['wall_seconds']:,.0f} s ({rec['forward_passes_per_second']:.0f} forward passes per second).")
    return "\n".join(lines + ["", source_line([f"{path}/results.json"], [rec], note)])


TABLES = {"digits-from-scratch": digits_from_scratch, "bench": bench, "diffusion": diffusion,
          "llm-merge": llm_merge, "llm-seeds": llm_seeds, "digits-from-pretrained": pretrained,
          "digits-vs-baselines-from-scratch": vs_baselines_from_scratch, "mnist5k": mnist5k}


def render(text: str, cache: dict) -> str:
    """The Markdown text with every marked table regenerated."""
    def fill(match):
        name = match.group(1)
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        if name not in cache:
            cache[name] = TABLES[name]().rstrip("\n")
        return f"<!-- table:{name} -->\n{cache[name]}\n<!-- /table:{name} -->"
    return MARK.sub(fill, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a table differs")
    args = parser.parse_args(argv)
    cache, stale = {}, []
    for doc in DOCS:
        path = os.path.join(ROOT, doc)
        with open(path) as f:
            old = f.read()
        new = render(old, cache)
        if new == old:
            continue
        stale.append(doc)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), doc, doc + " (regenerated)"))
        else:
            with open(path, "w") as f:
                f.write(new)
    if args.check and stale:
        print(f"tables differ from the results in {', '.join(stale)}: run python experiments/make_tables.py")
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(cache)} tables in {len(DOCS)} files"
          + ("" if args.check else f" ({len(stale)} changed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
