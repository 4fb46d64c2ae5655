"""The ``m2n2`` command line: a thin shell over the functional core.

Errors a user can fix (M2N2Error) end with a one-line message and exit
status 2; argparse mistakes do the same.
"""
from __future__ import annotations

import argparse
import os
import sys

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
    from .methods import ALL_METHODS, INITS
    from .tasks import TASKS

    parser = argparse.ArgumentParser(prog="m2n2", description="M2N2: evolve and merge models with natural niches.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evolve", help="run one method for R runs and write results.json and curves.png")
    ev.add_argument("--task", default="digits", help=f"task name ({', '.join(TASKS)}); default digits")
    ev.add_argument("--method", default="m2n2", help=f"one of {', '.join(ALL_METHODS)}; default m2n2")
    ev.add_argument("--init", choices=INITS, default="scratch",
                    help="'scratch': N(0, 0.01^2) seeds; 'pretrained': merge the two cached pre-trained models "
                         "(no mutation, default budget 10000)")
    ev.add_argument("--runs", type=_positive_int, default=1, help="independent runs, batched together (default 1)")
    ev.add_argument("--seed", type=int, default=42, help="run r uses seed S + r (default 42, as the paper)")
    ev.add_argument("--forward-passes", type=_positive_int, default=None,
                    help="children evaluated per run (default 50000 from scratch, 10000 from pre-trained)")
    ev.add_argument("--batch", type=_positive_int, default=1, help="children per step from one archive snapshot (default 1)")
    ev.add_argument("--log-every", type=_positive_int, default=None,
                    help="log test accuracy every K forward passes (default: about 500 points)")
    ev.add_argument("--archive-size", type=_positive_int, default=None, help="archive size P (default 20)")
    ev.add_argument("--alpha", type=_non_negative_float, default=None, help="competition exponent (method's default)")
    ev.add_argument("--mutation-std", type=_non_negative_float, default=None,
                    help="mutation std (default 0.01 from scratch, 0 from pre-trained)")
    ev.add_argument("--sigma", type=_non_negative_float, default=None,
                    help="initial step size of an evosax strategy (default: the method's, see docs)")
    ev.add_argument("--key-order", choices=("engine", "reference"), default="engine",
                    help="'reference' follows the authors' PRNG key order exactly (needs --batch 1)")
    ev.add_argument("--eval-batch-size", type=_positive_int, default=None,
                    help="children per jax.lax.map batch during evaluation (default: near 2)")
    ev.add_argument("--out", default=None, help="output directory (default runs/TASK-METHOD)")
    ev.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    cmp = sub.add_parser("compare", help="run several methods on equal budgets (or reuse finished runs) "
                                         "and write curves.png, table.md, results.json")
    cmp.add_argument("--task", default="digits", help="task name; default digits")
    cmp.add_argument("--methods", default=None, help="comma-separated methods to run (see evolve --method)")
    cmp.add_argument("--runs", type=_positive_int, default=10, help="runs per method (default 10)")
    cmp.add_argument("--seed", type=int, default=42, help="first seed (default 42)")
    cmp.add_argument("--forward-passes", type=_positive_int, default=None,
                     help="budget per run (default 50000 from scratch, 10000 from pre-trained)")
    cmp.add_argument("--init", choices=INITS, default="scratch", help="start from scratch or from pre-trained models")
    cmp.add_argument("--from", dest="from_dirs", nargs="+", default=None,
                     help="redraw the report from finished runs (method dirs, compare dirs or their parents)")
    cmp.add_argument("--title", default=None, help="figure and table title")
    cmp.add_argument("--out", required=True, help="report directory")

    bench = sub.add_parser("bench", help="throughput of the engine against a per-child Python loop")
    bench.add_argument("--forward-passes", type=_positive_int, default=2000, help="forward passes per measured setting")
    bench.add_argument("--loop-forward-passes", type=_positive_int, default=300, help="forward passes of the per-child loop")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="interleaved repeats (best is reported)")
    bench.add_argument("--out", default=None, help="also write bench.json and bench.md here")
    return parser


def cmd_evolve(args) -> int:
    import resource

    from . import results
    from .methods import DEFAULT_FORWARD_PASSES, check_method, run_method
    from .tasks import get_task

    check_method(args.method, args.init)
    forward_passes = args.forward_passes or DEFAULT_FORWARD_PASSES[args.init]
    task = get_task(args.task)
    out = args.out or os.path.join("runs", f"{args.task}-{args.method}" + ("-pretrained" if args.init == "pretrained" else ""))
    results_path = os.path.join(out, "results.json")
    if os.path.exists(results_path) and not args.overwrite:
        raise ConfigError(f"{out} already holds a run's results.json; pass --overwrite to replace it "
                          "or choose another --out.")
    os.makedirs(out, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.runs))
    print(f"m2n2 evolve: task={task.name} method={args.method} init={args.init} runs={args.runs} "
          f"seeds={seeds[0]}..{seeds[-1]} forward_passes={forward_passes} batch={args.batch} -> {out}",
          file=sys.stderr)
    res = run_method(args.method, task, seeds, forward_passes, init=args.init, log_every=args.log_every,
                     batch=args.batch, eval_batch_size=args.eval_batch_size, progress=not args.quiet,
                     key_order=args.key_order, sigma=args.sigma, archive_size=args.archive_size,
                     alpha=args.alpha, mutation_std=args.mutation_std)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    record = results.results_record(
        method=args.method, task=task.name, seeds=seeds, forward_passes=res.forward_passes,
        metrics=res.metrics, wall_seconds=res.wall_seconds,
        config={**res.config, "task": task.name, "method": args.method, "init": args.init, "runs": args.runs,
                "seed": args.seed, "forward_passes": forward_passes, "log_every": args.log_every,
                "eval_batch_size": args.eval_batch_size, "task_info": task.info},
        extra={**res.extra, "peak_rss_mb": round(peak_mb, 1)})
    results.write_json(results_path, record)
    results.plot_curves(os.path.join(out, "curves.png"), [record])
    import numpy as np

    np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best_vectors(),
                        seeds=np.asarray(seeds))
    acc = record["final_test_accuracy"]
    print(f"final test accuracy: mean {record['final_mean']:.4f} ± {record['final_sem']:.4f} (sem) over "
          f"{len(acc)} run(s); {record['forward_passes_per_second']:.0f} forward passes/s; peak RSS "
          f"{peak_mb:.0f} MB; wrote {results_path}, curves.png, best_models.npz")
    return 0


def cmd_compare(args) -> int:
    import shlex

    from . import compare
    from .methods import check_method

    command = "m2n2 " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    if args.from_dirs:
        if args.methods:
            raise ConfigError("pass either --methods (run them) or --from (reuse finished runs), not both.")
        records = compare.load_records(args.from_dirs)
    else:
        if not args.methods:
            raise ConfigError("pass --methods m2n2,cma-es,... to run, or --from DIR ... to reuse finished runs.")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            check_method(m, args.init)
        records = compare.run_all(methods, args.out, task=args.task, runs=args.runs, seed=args.seed,
                                  forward_passes=args.forward_passes, init=args.init,
                                  log=lambda msg: print(msg, file=sys.stderr))
    data = compare.report(records, args.out, command=command, title=args.title)
    print(compare.table_markdown(records), end="")
    print(f"wrote {os.path.join(args.out, 'curves.png')}, table.md, results.json ({len(data['records'])} methods)")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_benchmark

    run_benchmark(forward_passes=args.forward_passes, loop_forward_passes=args.loop_forward_passes,
                  repeats=args.repeats, out=args.out)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return {"evolve": cmd_evolve, "compare": cmd_compare, "bench": cmd_bench}[args.command](args)
    except M2N2Error as err:
        print(f"m2n2: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
