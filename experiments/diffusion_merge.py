"""Merge text-to-image digit generators across prompt languages with M2N2.

    python experiments/diffusion_merge.py                    # writes runs/diffusion-merge
    python experiments/diffusion_merge.py --out docs/results/diffusion-merge --overwrite   # regenerate the committed report

Trains a judge classifier, a shared base generator and its per-language
fine-tunes, merges them with M2N2 (fitness on language-A prompts only) and
the baselines, and writes results.json, table.md and grid.png to --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax

from m2n2_jax.diffusion import pipeline, report
from m2n2_jax.errors import ConfigError, M2N2Error
from m2n2_jax.results import environment, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/diffusion-merge",
                        help="where results.json, table.md, grid.png go (default runs/diffusion-merge)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--runs", type=int, default=pipeline.PipelineConfig.runs)
    parser.add_argument("--forward-passes", type=int, default=pipeline.PipelineConfig.forward_passes)
    parser.add_argument("--seed", type=int, default=pipeline.PipelineConfig.seed)
    args = parser.parse_args(argv)
    command = "python experiments/diffusion_merge.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        cfg = pipeline.PipelineConfig(runs=args.runs, forward_passes=args.forward_passes, seed=args.seed)
        if os.path.exists(os.path.join(args.out, "results.json")) and not args.overwrite:
            raise ConfigError(f"{args.out} already holds results.json; choose another --out, or add --overwrite "
                              "to replace it.")
        os.makedirs(args.out, exist_ok=True)
        start = time.perf_counter()
        log = lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)
        record, display, layout, _ = pipeline.run(cfg, log)
        record["command"] = command.strip()
        record["environment"] = environment()
        write_json(os.path.join(args.out, "results.json"), record)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(report.table_markdown(record, command.strip()))
        names, texts, images = report.grid_images(cfg.model, layout, display, cfg.lang_a, cfg.lang_b,
                                                  jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 200))
        report.save_grid(os.path.join(args.out, "grid.png"), names, texts, images,
                         f"one sample per prompt (same noise in every cell); left: {cfg.lang_a} (A), "
                         f"right: {cfg.lang_b} (B)")
        log(f"wrote {args.out}/results.json, table.md, grid.png")
        print(report.table_markdown(record, command.strip()))
    except M2N2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
