"""Summarise the noise-generator study: engine key order with hash or threefry noise against the
authors' algorithm (reference key order), 40 fresh seeds each, same starting models.

    python experiments/summarise_noise_study.py docs/results/digits-noise-study
"""
import json
import math
import os
import sys

import numpy as np

from m2n2_jax.io import results

CHECKPOINTS = [5000, 10000, 20000, 50000]
RUNS = [("engine-threefry", "engine key order, threefry noise (the default)"),
        ("engine-hash", "engine key order, hash noise (the default before)"),
        ("reference-order", "reference key order (the authors' algorithm, threefry)")]


def main(root):
    recs = {name: json.load(open(os.path.join(root, name, "results.json"))) for name, _ in RUNS}
    lines = ["# Mutation noise: threefry or a counter hash?", "",
             f"M2N2 from scratch on digits, seeds {recs['engine-hash']['seeds'][0]}-{recs['engine-hash']['seeds'][-1]} "
             f"({len(recs['engine-hash']['seeds'])} runs, the same two starting models per seed in every row), "
             "50,000 forward passes, float32 scoring. Mean ± standard error of the test accuracy of the best "
             "training member.", "",
             "| run | " + " | ".join(f"{fp // 1000}k" for fp in CHECKPOINTS) + " | runs below 0.83 | lowest |",
             "|---|" + "---:|" * (len(CHECKPOINTS) + 2)]
    finals = {}
    for name, label in RUNS:
        rec = recs[name]
        cells = []
        for fp in CHECKPOINTS:
            vals = results.value_at(rec["forward_passes"], rec["test_accuracy"], fp)
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1) / math.sqrt(len(vals)):.4f}")
        final = np.asarray(rec["final_test_accuracy"])
        finals[name] = final
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {int((final < 0.83).sum())} | {final.min():.3f} |")
    for name in ("engine-threefry", "engine-hash"):
        d = finals[name] - finals["reference-order"]
        lines.append("")
        lines.append(f"{name} minus reference order at 50k, paired by seed: {d.mean():+.4f} ± "
                     f"{d.std(ddof=1) / math.sqrt(len(d)):.4f}.")
    lines += ["", "Regenerate: `m2n2 evolve --task digits --seed 120 --runs 40 --forward-passes 50000 --noise threefry "
              "--out DIR/engine-threefry` (and `--noise hash`, `--key-order reference`), then this script."]
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} DIR   (e.g. docs/results/digits-noise-study to regenerate the committed summary)")
    main(sys.argv[1])
