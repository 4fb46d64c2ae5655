"""The ``m2n2`` program: one parser with a sub-command per module of this package, and the
start-up every command shares (CPU devices, multi-host runtime, one-line errors)."""
from __future__ import annotations

import argparse
import sys

from m2n2_jax.cli import bench, chat, compare, evolve, merge
from m2n2_jax.cli.options import OneLineParser
from m2n2_jax.engine import distributed
from m2n2_jax.engine.chunk_loop import Interrupted
from m2n2_jax.engine.devices import expose_cpu_devices
from m2n2_jax.errors import M2N2Error

COMMANDS = {"evolve": evolve, "merge": merge, "compare": compare, "bench": bench, "chat": chat}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="m2n2", description="M2N2: evolve and merge models with natural niches.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def _start_distributed(args) -> None:
    """Multi-host: start jax.distributed when --distributed or the coordinator options are given."""
    explicit = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if getattr(args, "distributed", False) or any(v is not None for v in explicit):
        distributed.initialize(*explicit)


def main(argv=None) -> int:
    """Run the command ``argv`` (default: the program's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.command in ("evolve", "bench", "merge"):
        expose_cpu_devices(args.cpu_devices)
    try:
        _start_distributed(args)
        return COMMANDS[args.command].run(args)
    except M2N2Error as err:
        distributed.report_start_failure(err)  # multi-host: the other processes stop too
        print(f"m2n2: {'stopped' if isinstance(err, Interrupted) else 'error'}: {err}", file=sys.stderr)
        return 130 if isinstance(err, Interrupted) else 2
    except KeyboardInterrupt:
        print("m2n2: stopped by the user before the run started; nothing to save.", file=sys.stderr)
        return 130
