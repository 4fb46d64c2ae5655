"""The SmolLM2 merge experiment's report: statistics over items and search seeds, the table, the plots.

Everything here reads the run directory (``run.json``, ``rows/*.json``, ``evals/*.json``), so
``--report-only`` rewrites the report from whatever has finished.

Statistics:
- a search method's held-out figures: the mean over its search seeds, with the standard error
  over seeds (sd / sqrt(seeds), none for one seed);
- M2N2 minus another method: the difference of held-out averages, (math gap + agent gap) / 2,
  where each gap compares the two methods on the same held-out items, each method's per-item
  score averaged over its seeds. Its 95 % interval is a bootstrap over both sources of noise:
  the items (resampled once per replicate, the same for both methods: paired) and the search
  seeds (resampled within each method). The item-only paired standard error is given beside it;
- sizes: the half-width of the item-paired 95 % interval that this run's per-item variances give,
  and the number of items per task that a half-width of 0.05 needs.
"""
from __future__ import annotations

import json
import os

import numpy as np

from m2n2_jax.errors import ConfigError
from m2n2_jax.methods.registry import get
from experiments.methods import PAPER_ABLATIONS

SEARCHES = PAPER_ABLATIONS + ("map-elites-4x4", "cma-es-layers")
CLASSIC = ("linear", "slerp", "task-arithmetic", "ties", "dare-linear", "dare-ties", "model-stock")
SEEDS = ("base", "math specialist", "agent specialist")
PAPER_BUDGET = 1000
Z95 = 1.959964
LABELS = {**{n: get(n).about.split(":")[0] for n in PAPER_ABLATIONS},
          "map-elites-4x4": "MAP-Elites 4 x 4", "cma-es-layers": "CMA-ES, per-layer SLERP",
          "linear": "linear", "slerp": "SLERP t=0.5", "task-arithmetic": "task arithmetic", "ties": "TIES",
          "dare-linear": "DARE linear", "dare-ties": "DARE TIES", "model-stock": "Model Stock"}


def search_row_name(method: str, seed: int) -> str:
    return f"{method} s{seed}"


# ---------------------------------------------------------------- statistics


def item_scores(evals: str, names) -> dict | None:
    """{"math": [S, Nm], "agent": [S, Na]} held-out per-item scores of the named rows (one per search seed)."""
    math, agent = [], []
    for name in names:
        path = os.path.join(evals, f"{name}.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            e = json.load(f)
        math.append(e["math_scores"])
        agent.append(e["agent_rewards"])
    if not math:
        return None
    return {"math": np.asarray(math, np.float64), "agent": np.asarray(agent, np.float64)}


def paired_gap(a: dict, b: dict) -> dict:
    """Held-out average of ``a`` minus ``b`` ({"math": [S, Nm], "agent": [S, Na]}, items aligned), each
    item's score averaged over a method's seeds, with the item-paired standard error:
    (var(math diff) / Nm + var(agent diff) / Na) ** 0.5 / 2."""
    dm = a["math"].mean(axis=0) - b["math"].mean(axis=0)
    da = a["agent"].mean(axis=0) - b["agent"].mean(axis=0)
    se = float(np.sqrt(dm.var(ddof=1) / len(dm) + da.var(ddof=1) / len(da)) / 2)
    return {"gap": float((dm.mean() + da.mean()) / 2), "se_items": se, "math_gap": float(dm.mean()),
            "agent_gap": float(da.mean()), "sd_math_diff": float(dm.std(ddof=1)),
            "sd_agent_diff": float(da.std(ddof=1))}


def bootstrap_gap(a: dict, b: dict, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of :func:`paired_gap`'s gap, resampling items (paired) and seeds."""
    rng = np.random.default_rng(seed)
    out = np.empty(reps)
    for r in range(reps):
        gap = 0.0
        for task in ("math", "agent"):
            items = rng.integers(0, a[task].shape[1], a[task].shape[1])
            sa = rng.integers(0, a[task].shape[0], a[task].shape[0])
            sb = rng.integers(0, b[task].shape[0], b[task].shape[0])
            gap += (a[task][np.ix_(sa, items)].mean() - b[task][np.ix_(sb, items)].mean()) / 2
        out[r] = gap
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def half_width(sd_math: float, sd_agent: float, n_math: int, n_agent: int) -> float:
    """Half-width of the item-paired 95 % interval of the average difference."""
    return Z95 * float(np.sqrt(sd_math ** 2 / n_math + sd_agent ** 2 / n_agent)) / 2


def items_needed(sd_math: float, sd_agent: float, target: float = 0.05) -> int:
    """Items per task (the same number for both) for a half-width of ``target``."""
    return int(np.ceil((Z95 / (2 * target)) ** 2 * (sd_math ** 2 + sd_agent ** 2)))


def mean_se(values) -> tuple[float, float | None]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def method_summary(rows: dict) -> dict:
    """{method: {"seeds": [...], "rows": [...], metric: (mean, se)}} over the search rows."""
    out: dict = {}
    for name, row in rows.items():
        if row.get("kind") == "search":
            out.setdefault(row["method"], {"seeds": [], "rows": []})
            out[row["method"]]["seeds"].append(row["search_seed"])
            out[row["method"]]["rows"].append(name)
    for method, m in out.items():
        for metric in ("math_accuracy", "agent_reward", "agent_success", "average", "fitness_mean",
                       "selection_mean", "wall_seconds", "peak_rss_mb"):
            m[metric] = mean_se([rows[n][metric] for n in m["rows"]])
        curves = [np.asarray(rows[n]["curve"], np.float64) for n in m["rows"] if rows[n].get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            m["curve"] = np.stack([c[:n] for c in curves]).mean(axis=0).tolist()
    return {k: out[k] for k in [s for s in SEARCHES if s in out] + [s for s in out if s not in SEARCHES]}


def comparisons(evals: str, summary: dict, reference: str = "m2n2") -> dict:
    """{other method: gap of ``reference`` minus it, with the bootstrap interval and item-paired SE}."""
    if reference not in summary:
        return {}
    ref = item_scores(evals, summary[reference]["rows"])
    out = {}
    for method, m in summary.items():
        other = item_scores(evals, m["rows"])
        if method == reference or ref is None or other is None:
            continue
        gap = paired_gap(ref, other)
        low, high = bootstrap_gap(ref, other)
        out[method] = {**gap, "ci95": [low, high], "excludes_zero": bool(low > 0 or high < 0),
                       "seeds": [len(ref["math"]), len(other["math"])]}
    return out


def sizes(comparison: dict, n_math: int, n_agent: int) -> dict:
    """This run's per-item SDs of paired differences (the largest over the comparisons) and what they imply."""
    if not comparison:
        return {}
    sd_m = max(c["sd_math_diff"] for c in comparison.values())
    sd_a = max(c["sd_agent_diff"] for c in comparison.values())
    return {"sd_math_diff": sd_m, "sd_agent_diff": sd_a, "math_items": n_math, "agent_items": n_agent,
            "half_width": half_width(sd_m, sd_a, n_math, n_agent), "items_for_0.05": items_needed(sd_m, sd_a)}


def fitness_agreement(rows: dict) -> dict:
    """How well the cheap teacher-forced fitness agrees with the held-out evaluation, over every model in the
    table: Pearson and Spearman correlations per task (fitness math share vs held-out math accuracy; fitness agent
    step score vs held-out agent reward; mean fitness vs held-out average), and whether fitness orders the two
    specialists as the held-out evaluation does on each task."""
    names = [n for n in rows if "fitness_math" in rows[n]]
    out = {"models": len(names)}
    if len(names) < 3:
        return out

    from scipy.stats import rankdata  # tied scores (many here) take their average rank, as Spearman's rho needs

    def corr(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.std() == 0 or b.std() == 0:
            return None
        return {"pearson": float(np.corrcoef(a, b)[0, 1]),
                "spearman": float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])}
    pairs = {"math": ("fitness_math", "math_accuracy"), "agent": ("fitness_agent", "agent_reward"),
             "average": ("fitness_mean", "average")}
    merges = [n for n in names if rows[n].get("kind") != "seed"]
    for task, (f, h) in pairs.items():
        out[task] = corr([rows[n][f] for n in names], [rows[n][h] for n in names])
        if len(merges) >= 3:  # without base and seeds, whose gaps dominate the correlation over every model
            out.setdefault("merges_only", {"models": len(merges)})[task] = corr([rows[n][f] for n in merges],
                                                                               [rows[n][h] for n in merges])
    if {"math specialist", "agent specialist"} <= set(rows):
        m, a = rows["math specialist"], rows["agent specialist"]
        out["seeds_ordered_alike"] = {
            "math": bool((m["fitness_math"] > a["fitness_math"]) == (m["math_accuracy"] > a["math_accuracy"])),
            "agent": bool((a["fitness_agent"] > m["fitness_agent"]) == (a["agent_reward"] > m["agent_reward"]))}
    return out


# ---------------------------------------------------------------- the report


def load_rows(out: str, order) -> dict:
    rows = {}
    for name in order:
        path = os.path.join(out, "rows", f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                rows[name] = json.load(f)
    return rows


def report(out: str) -> dict:
    """results.json, table.md, merge.png, curves.png and provenance.png from ``out/run.json`` and the rows."""
    path = os.path.join(out, "run.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist; run the pipeline with --out {out} first.")
    with open(path) as f:
        results = json.load(f)
    order = list(SEEDS) + list(results.get("row_order", []))
    rows = load_rows(out, order)
    results["rows"] = rows
    results["not_run"] = [n for n in order if n not in rows]
    summary = method_summary(rows)
    results["methods_summary"] = summary
    evals = os.path.join(out, "evals")
    results["m2n2_minus"] = comparisons(evals, summary)
    s = results["settings"]
    results["sizes"] = sizes(results["m2n2_minus"], s["math_test"], s["agent_test"])
    results["fitness_agreement"] = fitness_agreement(rows)
    measured = [r.get("seconds_per_child_median") for r in rows.values() if r.get("seconds_per_child_median")]
    if measured:  # scoring time of a child after compilation (the median over a search's children)
        results["seven_b"]["135m_seconds_per_child_measured_cpu"] = float(np.median(measured))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    write_table(os.path.join(out, "table.md"), results)
    plot_heldout(os.path.join(out, "merge.png"), rows, summary)
    plot_curves(os.path.join(out, "curves.png"), summary)
    plot_provenance(os.path.join(out, "provenance.png"), rows)
    return results


def _pm(mean_se_pair, digits: int = 3) -> str:
    mean, se = mean_se_pair
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def write_table(path: str, results: dict) -> None:
    s, rows, f, env = results["settings"], results["rows"], results["fitness"], results["environment"]
    summary, gaps, size = results["methods_summary"], results["m2n2_minus"], results["sizes"]
    took = "(unfinished run)" if results.get("seconds") is None else "%.0f min" % (results["seconds"] / 60)
    lines = ["# Merging SmolLM2-135M-Instruct specialists (math, shop agent)", "",
             f"Command: `{results['command']}`", "",
             f"CPU: {env.get('cpu', '?')}; total {took}. Held-out: {s['math_test']} math test problems (greedy, "
             f"KV cache, answer extracted), {s['agent_test']} agent test episodes (reward in [0, 1]; success = "
             "reward 1). Average = (math accuracy + agent reward) / 2. Every search run: "
             f"{s['budget']} fitness evaluations (the first {s['warmup']} of the M2N2 family and MAP-Elites are "
             f"random SLERP merges of the seeds); fitness datapoints: {f['math_problems']} math problems + "
             f"{f['agent_goals']} agent goals ({f['agent_steps']} expert steps), the same number per task so "
             f"that both weigh the same in the niche scores and in the mean. Reported model of a run: of its "
             f"{s['candidates']} children of best mean fitness, the best on a separate selection split "
             f"({s['selection_items']} problems + {s['selection_items']} goals).", "",
             "## Seeds and classic merges (mergekit semantics)", "",
             "| model | held-out math | agent reward | agent success | average | fitness (math / agent) |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        if r.get("kind") != "search":
            lines.append(f"| {LABELS.get(name, name)} | {r['math_accuracy']:.3f} | {r['agent_reward']:.3f} | "
                         f"{r['agent_success']:.2f} | {r['average']:.3f} | {r['fitness_math']:.3f} / "
                         f"{r['fitness_agent']:.3f} |")
    lines += ["", "## Search methods: mean ± standard error over search seeds", "",
              "| method | seeds | held-out math | agent reward | agent success | average | best fitness | "
              "selection score | wall time per run (s) | peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in summary.items():
        lines.append(f"| {LABELS.get(method, method)} | {len(m['seeds'])} | {_pm(m['math_accuracy'])} | "
                     f"{_pm(m['agent_reward'])} | {_pm(m['agent_success'], 2)} | {_pm(m['average'])} | "
                     f"{_pm(m['fitness_mean'])} | {_pm(m['selection_mean'])} | {m['wall_seconds'][0]:.0f} | "
                     f"{m['peak_rss_mb'][0]:.0f} |")
    if gaps:
        lines += ["", "## M2N2 minus each other search method (held-out average)", "",
                  "Paired over the same held-out items, each method's per-item scores averaged over its seeds; the "
                  "95 % interval is a bootstrap over items (paired) and search seeds.", "",
                  "| other method | seeds (M2N2 / other) | gap | 95 % interval | excludes 0 | item-paired SE | "
                  "math gap | agent gap |", "|---|---|---:|---|---|---:|---:|---:|"]
        for method, g in gaps.items():
            lines.append(f"| {LABELS.get(method, method)} | {g['seeds'][0]} / {g['seeds'][1]} | {g['gap']:+.3f} | "
                         f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] | {'yes' if g['excludes_zero'] else 'no'} | "
                         f"{g['se_items']:.3f} | {g['math_gap']:+.3f} | {g['agent_gap']:+.3f} |")
        best = max(summary, key=lambda k: summary[k]["average"][0])
        wins = [g["excludes_zero"] and g["gap"] > 0 for g in gaps.values()]
        lines += ["", f"Highest mean held-out average: {LABELS.get(best, best)} ({summary[best]['average'][0]:.3f}). "
                  + ("M2N2's interval excludes zero, above, against every other search method."
                     if all(wins) else
                     f"M2N2 is ahead with an interval that excludes zero against {sum(wins)} of {len(wins)} other "
                     "search methods, so this run does not show M2N2 as the best search method.")]
    if size:
        lines += ["", "## Sizes", "",
                  f"Largest per-item SD of a paired difference in this run: math {size['sd_math_diff']:.3f}, agent "
                  f"{size['sd_agent_diff']:.3f}. With {size['math_items']} problems and {size['agent_items']} "
                  f"episodes the item-paired 95 % half-width is 1.96 * sqrt(sd_m^2 / Nm + sd_a^2 / Na) / 2 = "
                  f"{size['half_width']:.3f}; ±0.05 needs {size['items_for_0.05']} items per task."]
    agree = results.get("fitness_agreement") or {}
    if agree.get("math") or agree.get("agent"):
        def fmt(c):
            return "n/a (no spread)" if not c else f"Pearson {c['pearson']:.2f}, Spearman {c['spearman']:.2f}"
        lines += ["", "## What the fitness separates", "",
                  f"Fitness against held-out, over the {agree['models']} models: math {fmt(agree.get('math'))}; "
                  f"agent {fmt(agree.get('agent'))}; average {fmt(agree.get('average'))}."]
        only = agree.get("merges_only")
        if only:
            lines[-1] += (f" Over the {only['models']} merged models only: math {fmt(only.get('math'))}; agent "
                          f"{fmt(only.get('agent'))}; average {fmt(only.get('average'))}.")
    search_rows = [r for r in rows.values() if r.get("kind") == "search" and "inserted" in r]
    if search_rows:
        lines += ["", "Competition: insertions into the archive (the seeds included) against evaluations: "
                  + "; ".join(f"{n} {r['inserted']} of {r.get('evaluations', '?')}" for n, r in rows.items()
                              if r in search_rows) + ". "
                  "Selection changed the pick (not the child of best fitness) in "
                  f"{sum(bool(r.get('selection_changed_pick')) for r in search_rows)} of {len(search_rows)} runs."]
    seven = results["seven_b"]
    per_child = seven["135m_seconds_per_child_measured_cpu"]
    lines += ["", "## Scale: 135M measured, a larger model and a GPU by arithmetic", "",
              f"- Fitness forward tokens per child: {seven['fitness_tokens_per_child']:,} (padded rows). "
              f"135M: {seven['135m_flops_per_child'] / 1e12:.2f} TFLOP per child (2 x params x tokens), "
              f"measured {per_child if per_child is None else round(per_child, 1)} s per child on this CPU. "
              f"Llama-2-7B: {seven['7b_flops_per_child'] / 1e12:.0f} TFLOP, about "
              f"{seven['7b_seconds_per_child_h100_at_40pct']:.2f} s per child on one H100 (bf16 at 40 % of peak), "
              f"so {PAPER_BUDGET} evaluations about {PAPER_BUDGET * seven['7b_seconds_per_child_h100_at_40pct'] / 60:.0f} "
              "min of forward passes on these datapoints.",
              f"- Memory of the recipe archive: 2 seeds + 1 working copy = 3 models; 135M in float32: "
              f"{3 * results['num_params'] * 4 / 2**30:.2f} GiB; 7B in bfloat16: {seven['7b_recipe_archive_gib']:.1f} "
              f"GiB, against {seven['7b_dense_archive_15_gib']:.0f} GiB for 15 dense members."]
    if results.get("not_run"):
        lines += ["", f"Not run yet: {', '.join(results['not_run'])}."]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str, legend_ax=None) -> None:
    if legend_ax is not None:
        legend_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_heldout(path: str, rows: dict, summary: dict) -> None:
    """Held-out math accuracy and agent reward: seeds and classic merges, then search methods (seed mean ± SE)."""
    plt = _pyplot()
    bars = [(LABELS.get(n, n), r["math_accuracy"], 0, r["agent_reward"], 0) for n, r in rows.items()
            if r.get("kind") != "search"]
    bars += [(LABELS.get(k, k), m["math_accuracy"][0], m["math_accuracy"][1] or 0, m["agent_reward"][0],
              m["agent_reward"][1] or 0) for k, m in summary.items()]
    x = np.arange(len(bars))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(bars)), 4.5))
    ax.bar(x - 0.2, [b[1] for b in bars], 0.4, yerr=[b[2] for b in bars], label="held-out math accuracy")
    ax.bar(x + 0.2, [b[3] for b in bars], 0.4, yerr=[b[4] for b in bars], label="held-out agent reward")
    ax.set_xticks(x, [b[0] for b in bars], rotation=45, ha="right")
    ax.set_title("SmolLM2-135M merges (search methods: mean ± SE over search seeds)")
    _save(fig, path, ax)


def plot_curves(path: str, summary: dict) -> None:
    """Best mean fitness against evaluations, each search method's mean over its seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, m in summary.items():
        if m.get("curve"):
            c = np.asarray(m["curve"])
            ax.plot(c[:, 0], c[:, 1], label=f"{LABELS.get(method, method)} ({len(m['seeds'])} seeds)")
    ax.set_xlabel("fitness evaluations")
    ax.set_ylabel("best mean fitness (mean over seeds)")
    _save(fig, path, ax)


def plot_provenance(path: str, rows: dict, method: str = "m2n2") -> None:
    """The share of the math specialist in every layer of M2N2's reported merge, one line per search seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, r in rows.items():
        p = r.get("provenance")
        if r.get("method") == method and p:
            ax.plot(np.arange(len(p["math_share"])), p["math_share"], marker="o", ms=3, label=name)
            ax.set_xticks(np.arange(len(p["layers"])), p["layers"], rotation=90, fontsize=6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of the math specialist")
    ax.set_title("Provenance of M2N2's merge (the rest comes from the agent specialist)")
    _save(fig, path, ax)
