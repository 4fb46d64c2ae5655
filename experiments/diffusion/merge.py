"""Merge text-to-image digit denoisers across prompt languages with M2N2, as the paper's section 4.3.

    python -m experiments.diffusion.merge                    # writes runs/diffusion-merge
    python -m experiments.diffusion.merge --out docs/results/diffusion-merge --overwrite   # regenerate the committed report

Trains (or loads from --cache) a judge, a bilingual base generator, a
Japanese seed (encoder and denoiser) and three English seeds (denoiser
only); keeps the Japanese encoder fixed and merges the four denoisers with
M2N2 (attention and other parameters as two groups, continuous scores, a
Japanese-only fitness), its ablations, the GA and the baselines; writes
results.json, table.md and grid.png to --out. Progress goes to stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax

from experiments.diffusion import pipeline, report
from m2n2_jax.errors import ConfigError, M2N2Error
from m2n2_jax.io.results import environment, write_json


def main(argv=None) -> int:
    defaults = pipeline.PipelineConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/diffusion-merge", help="output folder (default: runs/diffusion-merge)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--cache", default="runs/cache", help="where trained seeds are kept (default: runs/cache)")
    parser.add_argument("--compile-cache", default="runs/cache/jax",
                        help="JAX's persistent compilation cache, so that a rerun skips XLA compilation "
                             "('' to disable; default: runs/cache/jax)")
    parser.add_argument("--checkpoints", default=None,
                        help="save each merge method's engine runs here (one folder per method; default: none)")
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--forward-passes", type=int, default=defaults.forward_passes)
    parser.add_argument("--cma-runs", type=int, default=defaults.cma_runs)
    parser.add_argument("--methods", default=",".join(defaults.methods))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--diagnostics", action="store_true",
                        help="only the group-swap diagnostic (one group from the Japanese seed, the other from an "
                             "English one): writes diagnostics.json to --out")
    args = parser.parse_args(argv)
    command = "python -m experiments.diffusion.merge " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        cfg = dataclasses.replace(defaults, runs=args.runs, forward_passes=args.forward_passes,
                                  cma_runs=args.cma_runs, seed=args.seed,
                                  methods=tuple(m for m in args.methods.split(",") if m))
        if (not args.diagnostics and os.path.exists(os.path.join(args.out, "results.json"))
                and not args.overwrite):
            raise ConfigError(f"{args.out} already holds results.json; choose another --out, or add --overwrite "
                              "to replace it.")
        os.makedirs(args.out, exist_ok=True)
        if args.compile_cache:
            jax.config.update("jax_compilation_cache_dir", args.compile_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        start, load_start = time.perf_counter(), os.getloadavg()
        log = lambda msg: print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)
        if args.diagnostics:
            st = pipeline.setup(cfg, log, cache_dir=args.cache)
            write_json(os.path.join(args.out, "diagnostics.json"),
                       {"command": command.strip(), "group_swaps": pipeline.group_swaps(st, log),
                        "environment": environment()})
            log(f"wrote {args.out}/diagnostics.json")
            return 0
        record, display, layout = pipeline.run(cfg, log, cache_dir=args.cache,
                                                checkpoint_dir=args.checkpoints)
        record["command"] = command.strip()
        record["environment"] = {**environment(), "load_average_1min": {"start": round(load_start[0], 1),
                                                                       "end": round(os.getloadavg()[0], 1)}}
        write_json(os.path.join(args.out, "results.json"), record)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(report.table_markdown(record, command.strip()))
        names, texts, images = report.grid_images(cfg.model, layout, display,
                                                  jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 200))
        report.save_grid(os.path.join(args.out, "grid.png"), names, texts, images,
                         "one sample per prompt, the same noise in every cell; left: Japanese captions, "
                         "right: English (never in the fitness)")
        log(f"wrote {args.out}/results.json, table.md, grid.png")
        print(report.table_markdown(record, command.strip()))
    except M2N2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
