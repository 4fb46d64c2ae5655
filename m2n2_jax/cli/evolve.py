"""``m2n2 evolve``: run one method for R runs and write results.json, curves.png and best_models.npz.

To add an option: a run setting (recorded in checkpoints, compared on resume) is a field of
:class:`~m2n2_jax.cli.options.EvolveSettings`; an option that only changes how the run is
carried out goes in :func:`add_parser` below.
"""
from __future__ import annotations

import os
import sys

import jax

from m2n2_jax.cli.options import EvolveSettings, add_run_control, add_settings, positive_int
from m2n2_jax.cli.running import resolve, run_options, task_of
from m2n2_jax.engine import distributed
from m2n2_jax.engine.memory import check_evolve
from m2n2_jax.errors import ConfigError
from m2n2_jax.io.run_dirs import prepare_output_dir
from m2n2_jax.io.run_outputs import write_evolve_outputs
from m2n2_jax.methods.registry import (ALL_METHODS, ARCHIVE_SIZES, DEFAULT_FORWARD_PASSES, INITS, get, names,
                                       prepare)
from m2n2_jax.tasks import TASKS


def add_parser(sub) -> None:
    parser = sub.add_parser("evolve", help="run one method for R runs and write results.json and curves.png")
    add_settings(parser, EvolveSettings, tasks=", ".join(TASKS), methods=", ".join(ALL_METHODS),
                 reference_methods=", ".join(names(lambda m: "reference" in m.key_orders)))
    parser.add_argument("--devices", type=positive_int, help="use at most N local devices (default all)")
    add_run_control(parser, default_out="runs/TASK-METHOD", checkpoint_every=5000)


def _devices(count: int | None):
    """The first ``count`` devices (None: all), refusing more than exist."""
    if not count:
        return None
    available = jax.devices()  # one process: its local devices; multi-host: all processes' devices
    if count > len(available):
        where = "local" if jax.process_count() == 1 else "(all processes')"
        raise ConfigError(f"--devices {count} but only {len(available)} {where} device(s) exist; "
                          f"pass --devices {len(available)} or fewer.")
    return available[:count]


def run(args) -> int:
    settings = resolve(args, EvolveSettings)
    method, init = settings["method"], settings["init"]
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose 'scratch' or 'pretrained'.")
    forward_passes = settings["forward_passes"] or DEFAULT_FORWARD_PASSES[init]
    out = args.resume or args.out or os.path.join(
        "runs", f"{settings['task']}-{method}" + ("-pretrained" if init == "pretrained" else ""))
    task = task_of(settings, args, train_size=settings["train_size"])
    seeds = settings.seeds()
    family = get(method).family
    if family in ARCHIVE_SIZES:  # memory known before work starts (one line if short)
        check_evolve(task.num_params, 2, len(seeds), settings["archive_size"] or ARCHIVE_SIZES[family],
                     settings["batch"], len(jax.local_devices()), scoring_bytes=task.scoring_bytes)
    start = prepare(method, task, seeds, forward_passes, init=init, log_every=settings["log_every"],
                    **settings.algorithm())  # every check, before anything is written
    distributed.main_first(prepare_output_dir, out, bool(args.resume), args.overwrite)  # multi-host: process 0 first
    devices = _devices(args.devices)
    distributed.is_main() and print(f"m2n2 evolve: task={task.name} method={method} init={init} runs={len(seeds)} "
                                    f"seeds={seeds[0]}..{seeds[-1]} forward_passes={forward_passes} "
                                    f"batch={settings['batch']} -> {out}{' (resuming)' if args.resume else ''}",
                                    file=sys.stderr)
    res = start(run_options(args, out, settings, method, devices=devices,
                            eval_batch_size=settings["eval_batch_size"]))
    if distributed.is_main():  # multi-host: every process has the results, process 0 writes them
        print(write_evolve_outputs(out, settings.values, task, res, seeds, forward_passes))
    return 0
