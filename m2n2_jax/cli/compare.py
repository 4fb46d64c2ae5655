"""``m2n2 compare``: several methods on equal budgets (or finished runs) in one report."""
from __future__ import annotations

import os
import shlex
import sys

from m2n2_jax.cli.options import positive_int
from m2n2_jax.errors import ConfigError
from m2n2_jax.io import compare
from m2n2_jax.methods.registry import INITS, check


def add_parser(sub) -> None:
    parser = sub.add_parser("compare", help="run several methods on equal budgets (or reuse finished runs) "
                                            "and write curves.png, table.md, results.json")
    parser.add_argument("--task", default="digits", help="task name; default digits")
    parser.add_argument("--methods", default=None, help="comma-separated methods to run (see evolve --method)")
    parser.add_argument("--runs", type=positive_int, default=10, help="runs per method (default 10)")
    parser.add_argument("--seed", type=int, default=42, help="first seed (default 42)")
    parser.add_argument("--forward-passes", type=positive_int, default=None,
                        help="budget per run (default 50000 from scratch, 10000 from pre-trained)")
    parser.add_argument("--init", choices=INITS, default="scratch",
                        help="start from scratch or from pre-trained models")
    parser.add_argument("--from", dest="from_dirs", nargs="+", default=None,
                        help="redraw the report from finished runs (method dirs, compare dirs or their parents)")
    parser.add_argument("--title", default=None, help="figure and table title")
    parser.add_argument("--out", required=True, help="report directory")


def run(args) -> int:
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
            check(m, args.init)
        records = compare.run_all(methods, args.out, task=args.task, runs=args.runs, seed=args.seed,
                                  forward_passes=args.forward_passes, init=args.init,
                                  log=lambda msg: print(msg, file=sys.stderr))
    data = compare.report(records, args.out, command=command, title=args.title)
    print(compare.table_markdown(records), end="")
    print(f"wrote {os.path.join(args.out, 'curves.png')}, table.md, results.json ({len(data['records'])} methods)")
    return 0
