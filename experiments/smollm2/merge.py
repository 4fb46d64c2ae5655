"""SmolLM2-135M-Instruct math and agent specialists merged by M2N2 and the baselines, one command.

Run from the repository root:

    python -m experiments.smollm2.merge --out runs/smollm2-merge             # the CPU budget (hours)
    python -m experiments.smollm2.merge --quick --out runs/smollm2-quick     # the quick variant (minutes)
    python -m experiments.smollm2.merge --paper-budget --out runs/smollm2-paper   # 1,000 evaluations (a GPU)

The steps are in :mod:`experiments.smollm2.pipeline`.
"""
from __future__ import annotations

import argparse
import sys

from experiments.smollm2 import pipeline, report, specialists
from m2n2_jax.errors import M2N2Error


QUICK = dict(budget=20, warmup=2, fitness_items=6, selection_items=6, candidates=3, seeds=1, ablation_seeds=1,
             math_test=40, agent_test=30)
QUICK_METHODS = "m2n2,ga,cma-es-layers,linear"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SmolLM2 specialists merged by M2N2 and baselines, one command.")
    parser.add_argument("--out", default="runs/smollm2-merge", help="output directory (default runs/smollm2-merge)")
    parser.add_argument("--gguf", default=specialists.GGUF, help="SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--cache", default=specialists.CACHE, help="where the fine-tuned specialists are cached")
    parser.add_argument("--quick", action="store_true",
                        help="the README's quick variant: budget 20, 1 seed, small sets, 4 methods")
    parser.add_argument("--budget", type=int, default=None, help="fitness evaluations per search run (default 150)")
    parser.add_argument("--paper-budget", action="store_true",
                        help=f"{report.PAPER_BUDGET} fitness evaluations, warm-up 50, CMA-ES population 25 (for a GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="random seed merges first (default budget // 10, <= 50)")
    for field in ("fitness_items", "selection_items", "candidates", "seeds", "ablation_seeds", "math_test",
                  "agent_test"):
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=None,
                            help=f"default {getattr(pipeline.Settings, field)} ({QUICK[field]} with --quick)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset (default: all; --quick: {QUICK_METHODS})")
    parser.add_argument("--seed", type=int, default=0, help="data seed (splits, catalogue)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-seed-rows", action="store_true",
                        help="skip the held-out rows of base and seeds (a second process running other --methods "
                             "into the same --out)")
    parser.add_argument("--report-only", action="store_true",
                        help="write table.md, results.json and the plots from the rows finished so far in --out")
    args = parser.parse_args(argv)
    sizes = dict(QUICK) if args.quick else {}
    if args.paper_budget:
        sizes.update(budget=report.PAPER_BUDGET, cma_population=25)
    sizes.update({k: v for k, v in vars(args).items() if k in pipeline.Settings.__dataclass_fields__ and v is not None
                  and k != "seed"})
    budget = sizes.get("budget", pipeline.Settings.budget)
    sizes.setdefault("warmup", min(50, budget // 10))
    methods = args.methods or (QUICK_METHODS if args.quick else None)
    try:
        s = pipeline.Settings(seed=args.seed, **sizes)
        command = " ".join(["python -m experiments.smollm2.merge"] + list(sys.argv[1:] if argv is None else argv))
        if args.report_only:
            report.report(args.out)
            return 0
        pipeline.run(s, args.out, args.gguf, args.cache, methods.split(",") if methods else None, command,
                     not args.quiet, not args.no_seed_rows,
                     finetune_settings=specialists.QUICK_SETTINGS if args.quick else None)
    except M2N2Error as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
