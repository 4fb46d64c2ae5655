"""The ``m2n2`` command line: a thin shell over the functional core.

Errors a user can fix (M2N2Error) end with a one-line message and exit
status 2; argparse mistakes do the same.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import METHODS
from .errors import ConfigError, M2N2Error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .tasks import TASKS

    parser = argparse.ArgumentParser(prog="m2n2", description="M2N2: evolve and merge models with natural niches.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evolve", help="run one method for R runs and write results.json and curves.png")
    ev.add_argument("--task", default="digits", help=f"task name ({', '.join(TASKS)}); default digits")
    ev.add_argument("--method", default="m2n2", help=f"one of {', '.join(METHODS)}; default m2n2")
    ev.add_argument("--runs", type=_positive_int, default=1, help="independent runs, batched together (default 1)")
    ev.add_argument("--seed", type=int, default=42, help="run r uses seed S + r (default 42, as the paper)")
    ev.add_argument("--forward-passes", type=_positive_int, default=50_000, help="children evaluated per run (default 50000)")
    ev.add_argument("--batch", type=_positive_int, default=1, help="children per step from one archive snapshot (default 1)")
    ev.add_argument("--log-every", type=_positive_int, default=None,
                    help="log test accuracy every K forward passes (default: about 500 points)")
    ev.add_argument("--archive-size", type=_positive_int, default=None, help="archive size P (default 20)")
    ev.add_argument("--alpha", type=_non_negative_float, default=None, help="competition exponent (method's default)")
    ev.add_argument("--mutation-std", type=_non_negative_float, default=None, help="mutation std (default 0.01)")
    ev.add_argument("--key-order", choices=("engine", "reference"), default="engine",
                    help="'reference' follows the authors' PRNG key order exactly (needs --batch 1)")
    ev.add_argument("--eval-batch-size", type=_positive_int, default=None,
                    help="children per jax.lax.map batch during evaluation (default: near 2)")
    ev.add_argument("--out", default=None, help="output directory (default runs/TASK-METHOD)")
    ev.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    bench = sub.add_parser("bench", help="throughput of the engine against a per-child Python loop")
    bench.add_argument("--forward-passes", type=_positive_int, default=2000, help="forward passes per measured setting")
    bench.add_argument("--loop-forward-passes", type=_positive_int, default=300, help="forward passes of the per-child loop")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="interleaved repeats (best is reported)")
    bench.add_argument("--out", default=None, help="also write bench.json and bench.md here")
    return parser


def cmd_evolve(args) -> int:
    from . import results
    from .config import method_config
    from .evolution import evolve
    from .tasks import get_task

    overrides = {k: v for k, v in {"archive_size": args.archive_size, "alpha": args.alpha,
                                   "mutation_std": args.mutation_std}.items() if v is not None}
    config = method_config(args.method, children_per_step=args.batch, key_order=args.key_order, **overrides)
    task = get_task(args.task)
    out = args.out or os.path.join("runs", f"{args.task}-{args.method}")
    results_path = os.path.join(out, "results.json")
    if os.path.exists(results_path) and not args.overwrite:
        raise ConfigError(f"{out} already holds a run's results.json; pass --overwrite to replace it "
                          "or choose another --out.")
    os.makedirs(out, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.runs))
    print(f"m2n2 evolve: task={task.name} method={args.method} runs={args.runs} seeds={seeds[0]}..{seeds[-1]} "
          f"forward_passes={args.forward_passes} batch={args.batch} -> {out}", file=sys.stderr)
    res = evolve(config, task, seeds, args.forward_passes, log_every=args.log_every,
                 eval_batch_size=args.eval_batch_size, progress=not args.quiet)
    record = results.results_record(
        method=args.method, task=task.name, seeds=seeds, forward_passes=res.forward_passes,
        metrics=res.metrics, wall_seconds=res.wall_seconds,
        config={**config.to_dict(), "task": task.name, "method": args.method, "runs": args.runs,
                "seed": args.seed, "forward_passes": args.forward_passes, "log_every": args.log_every,
                "eval_batch_size": args.eval_batch_size, "task_info": task.info})
    results.write_json(results_path, record)
    results.plot_curves(os.path.join(out, "curves.png"), [record])
    import numpy as np

    np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best_vectors(),
                        seeds=np.asarray(seeds))
    acc = record["final_test_accuracy"]
    print(f"final test accuracy: mean {record['final_mean']:.4f} ± {record['final_sem']:.4f} (sem) over "
          f"{len(acc)} run(s); {record['forward_passes_per_second']:.0f} forward passes/s; "
          f"wrote {results_path}, curves.png, best_models.npz")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmark

    run_benchmark(forward_passes=args.forward_passes, loop_forward_passes=args.loop_forward_passes,
                  repeats=args.repeats, out=args.out)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"evolve": cmd_evolve, "bench": cmd_bench}[args.command](args)
    except M2N2Error as err:
        print(f"m2n2: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
