"""SmolLM2-135M-Instruct math and agent specialists merged by M2N2 and the baselines, one command.

Run from the repository root:

    python -m experiments.smollm2.merge --out runs/smollm2-merge             # the CPU budget
    python -m experiments.smollm2.merge --paper-budget --out runs/smollm2-paper   # 1,000 evaluations (a GPU)

The steps are in :mod:`experiments.smollm2.pipeline`.
"""
from __future__ import annotations

import argparse
import sys

from experiments.smollm2 import pipeline, specialists
from m2n2_jax.errors import M2N2Error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SmolLM2 specialists merged by M2N2 and baselines, one command.")
    parser.add_argument("--out", default="runs/smollm2-merge", help="output directory (default runs/smollm2-merge)")
    parser.add_argument("--gguf", default=specialists.GGUF, help="SmolLM2-135M-Instruct GGUF file")
    parser.add_argument("--cache", default=specialists.CACHE, help="where the fine-tuned specialists are cached")
    parser.add_argument("--budget", type=int, default=pipeline.Settings.budget, help="fitness evaluations per search method")
    parser.add_argument("--paper-budget", action="store_true",
                        help=f"{pipeline.PAPER_BUDGET} fitness evaluations, warm-up 50, CMA-ES population 25 (for a GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="random seed merges first (default budget // 4, <= 50)")
    parser.add_argument("--math-fitness", type=int, default=pipeline.Settings.math_fitness)
    parser.add_argument("--agent-fitness", type=int, default=pipeline.Settings.agent_fitness)
    parser.add_argument("--math-test", type=int, default=pipeline.Settings.math_test)
    parser.add_argument("--agent-test", type=int, default=pipeline.Settings.agent_test)
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-seed-rows", action="store_true",
                        help="skip the held-out rows of base and seeds (a second process running other --methods "
                             "into the same --out)")
    parser.add_argument("--report-only", action="store_true",
                        help="write table.md, results.json and merge.png from the rows finished so far in --out")
    args = parser.parse_args(argv)
    budget = pipeline.PAPER_BUDGET if args.paper_budget else args.budget
    warmup = args.warmup if args.warmup is not None else min(50, budget // 4)
    try:
        s = pipeline.Settings(budget=budget, warmup=warmup, math_fitness=args.math_fitness, agent_fitness=args.agent_fitness,
                     math_test=args.math_test, agent_test=args.agent_test, seed=args.seed,
                     cma_population=25 if args.paper_budget else pipeline.Settings.cma_population)
        command = " ".join(["python -m experiments.smollm2.merge"] + list(sys.argv[1:] if argv is None else argv))
        if args.report_only:
            pipeline.report(args.out)
            return 0
        pipeline.run(s, args.out, args.gguf, args.cache, args.methods.split(",") if args.methods else None, command,
            not args.quiet, not args.no_seed_rows)
    except M2N2Error as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
