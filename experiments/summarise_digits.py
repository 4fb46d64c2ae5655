"""Summarise the from-scratch digits runs against the authors' code.

    python experiments/summarise_digits.py docs/results/digits-from-scratch

Writes summary.md (means, standard errors, the fresh-seed comparison with the
authors' code, the ranking of methods) and curves.png (all methods on seeds
42-51) into the given directory.
"""
import json
import math
import os
import sys

import numpy as np

from m2n2_jax.io import results

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHORS = os.path.join(HERE, "..", "tests", "data", "reference_digits.json")
CHECKPOINTS = [5000, 10000, 20000, 50000]
PAPER_50K = {"m2n2": 0.87, "m2n2-no-crossover": 0.77, "ga-no-crossover": 0.71, "ga": 0.68}


def load(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


def at(rec, fp):
    vals = results.value_at(rec["forward_passes"], rec["test_accuracy"], fp)
    mean, sem = results.mean_and_sem(np.asarray(vals)[:, None])
    return float(mean[0]), float(sem[0])


def main(root):
    lines = ["# Digits from scratch: M2N2 engine against the authors' code", ""]
    with open(ANCHORS) as f:
        anchors = json.load(f)["runs"]
    fresh = os.path.join(root, "m2n2-seeds100-119")
    if os.path.exists(os.path.join(fresh, "results.json")):
        rec = load(fresh)
        ref = anchors["natural_niches_fresh_seeds_100_119"]
        precision = rec["config"].get("matmul_precision", "float32")
        lines += [f"## Statistical fidelity: 20 fresh seeds (100-119), engine key order, {precision} scoring, "
                  "vs authors' code", "",
                  "| forward passes | engine mean ± se | authors' code mean ± se | difference / combined se | within 3 se |",
                  "|---:|---:|---:|---:|:---:|"]
        for fp in CHECKPOINTS:
            m, s = at(rec, fp)
            i = ref["forward_passes"].index(fp)
            rm, rs = ref["mean_test_accuracy"][i], ref["standard_error"][i]
            z = (m - rm) / math.sqrt(s ** 2 + rs ** 2)
            lines.append(f"| {fp:,} | {m:.4f} ± {s:.4f} | {rm:.4f} ± {rs:.4f} | {z:+.2f} | {'yes' if abs(z) <= 3 else 'NO'} |")
        lines += ["", f"Engine wall time for 20 runs x {rec['forward_passes'][-1]:,} forward passes: "
                  f"{rec['wall_seconds']:.0f} s ({rec['forward_passes_per_second']:.0f} forward passes/s).", ""]
    methods = [m for m in ["m2n2", "m2n2-no-crossover", "m2n2-no-split-point", "m2n2-no-attraction", "ga",
                           "ga-no-crossover"] if os.path.exists(os.path.join(root, m, "results.json"))]
    records = [load(os.path.join(root, m)) for m in methods]
    if records:
        precisions = sorted({r["config"].get("matmul_precision", "float32") for r in records})
        lines += ["## All methods, seeds 42-51 (10 runs each)", "",
                  f"Children scored with {' and '.join(precisions)} matmuls; test accuracy in float32.", "",
                  "| method | " + " | ".join(f"{fp // 1000}k" for fp in CHECKPOINTS) +
                  " | paper at 50k | first fp >= 0.85 (runs reaching) | wall s |",
                  "|---|" + "---:|" * len(CHECKPOINTS) + "---:|---:|---:|"]
        for m, rec in zip(methods, records):
            cells = [f"{at(rec, fp)[0]:.3f} ± {at(rec, fp)[1]:.3f}" for fp in CHECKPOINTS]
            reach = [x for x in rec["first_fp_reaching_0.85"] if x is not None]
            reach_txt = f"{int(np.median(reach)):,} ({len(reach)}/{len(rec['seeds'])})" if reach else f"- (0/{len(rec['seeds'])})"
            paper = f"{PAPER_50K[m]:.2f}" if m in PAPER_50K else "-"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {paper} | {reach_txt} | {rec['wall_seconds']:.0f} |")
        lines += ["", "How each ran (float results depend on the evaluation batch, so trajectories can differ "
                  "in the last bits between settings): " + "; ".join(
                      f"{m}: {r['config'].get('noise', 'hash')} noise, eval batch {r['execution']['eval_batch_size']} "
                      f"on {r['execution']['devices']} "
                      f"device(s){' by ' + r['execution']['sharding'] if r['execution']['sharding'] else ''}"
                      if "execution" in r else f"{m}: not recorded"
                      for m, r in zip(methods, records)) + "."]
        order = sorted(PAPER_50K, key=PAPER_50K.get, reverse=True)
        got = [m for m in order if m in methods]
        finals = {m: at(r, CHECKPOINTS[-1])[0] for m, r in zip(methods, records)}
        ours = sorted(got, key=finals.get, reverse=True)
        lines += ["", f"Paper's ranking at 50k: {' > '.join(order)}.",
                  f"Ours: {' > '.join(f'{m} ({finals[m]:.3f})' for m in ours)} "
                  f"({'same order' if ours == got else 'order differs'}).", "",
                  "Authors' code on the same seeds 42-51 (their key order): "
                  f"{anchors['natural_niches_10_runs']['mean_test_accuracy'][-1]:.3f} at 50k; "
                  f"GA (3 seeds): {anchors['ga']['mean_test_accuracy'][-1]:.3f}."]
        results.plot_curves(os.path.join(root, "curves.png"), records,
                            title="digits from scratch, seeds 42-51: mean ± standard error")
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} DIR   (e.g. docs/results/digits-from-scratch to regenerate the committed summary)")
    main(sys.argv[1])
