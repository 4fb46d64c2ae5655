"""The options of the ``m2n2`` commands, declared once.

A run's settings (what a checkpoint records and a resume must agree with) are fields of a
dataclass: :class:`RunSettings` holds those ``evolve`` and ``merge`` share, and
:class:`EvolveSettings` and :class:`MergeSettings` add their own. Each field gives its option's
name (from the field's), default, type and help; :func:`add_settings` declares them on a
parser, with argparse defaults of None so that an option not given can be told apart (and
take the checkpoint's value when resuming). The options that control how a run is carried out
(output directory, checkpoints, devices, hosts, progress) are not settings: a run resumed with
other values of them is the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

from m2n2_jax.methods.registry import INITS, KEY_ORDERS


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports mistakes in one line (no usage block) and exits with 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int, wanted: str) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, with a message naming what was wanted."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def setting(default: Any, help: str, **argparse_options) -> Any:
    """A settings field: its default and the option's help and argparse options (type, choices, ...).

    help may name the command's lists as {tasks}, {methods} and {reference_methods}. A default
    that is not None is added to the help as "(default X)"; a None default ("the method's" or
    "depends on ...") is explained by the help itself.
    """
    return dataclasses.field(default=default, metadata={"help": help, "argparse": argparse_options})


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Settings of evolve and merge (None: the method's or the task's default)."""

    task: str = setting("digits", "task name ({tasks}) or a plugin module:function / path/to/file.py:function "
                                  "returning a Task")
    task_args: list | None = setting(None, "keyword argument for a task plugin (repeatable; VALUE is read as JSON "
                                           "if it parses)", flag="--task-arg", action="append", metavar="KEY=VALUE")
    method: str = setting("m2n2", "one of {methods}")
    runs: int = setting(1, "independent runs, batched together", type=positive_int)
    seed: int = setting(42, "run r uses seed S + r", type=non_negative_int)
    forward_passes: int | None = setting(None, "children evaluated per run (default 50000 from scratch, 10000 "
                                               "from pre-trained or given models)", type=positive_int)
    batch: int = setting(1, "children per step from one archive snapshot", type=positive_int)
    log_every: int | None = setting(None, "log metrics every K forward passes (default: about 500 points)",
                                    type=positive_int)
    archive_size: int | None = setting(None, "archive size P (default 20)", type=positive_int)
    alpha: float | None = setting(None, "competition exponent (default: the method's; 1 for m2n2)",
                                  type=non_negative_float)
    mutation_std: float | None = setting(None, "mutation std (default 0.01 from scratch, 0 when merging "
                                               "pre-trained or given models: pure merging)", type=non_negative_float)
    hidden: int | None = setting(None, "built-in tasks: hidden units of the MLP (default 256, as the paper)",
                                 type=positive_int)
    matmul_precision: str = setting("float32", "built-in tasks: precision of the matmuls that score children on "
                                               "the training set. bfloat16 rounds their operands to bf16 and "
                                               "accumulates in float32, as TPUs do by default; about 1.5x faster on "
                                               "CPUs with AVX512-BF16. Test accuracy is always float32",
                                    choices=("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True)
class EvolveSettings(RunSettings):
    """Settings of ``m2n2 evolve``."""

    init: str = setting("scratch", "'scratch': N(0, 0.01^2) seeds; 'pretrained': merge the two cached "
                                   "pre-trained models (no mutation, default budget 10000)", choices=INITS)
    sigma: float | None = setting(None, "initial step size of an evosax strategy (default: the method's, see "
                                        "docs)", type=non_negative_float)
    key_order: str = setting("engine", "'reference' follows the authors' PRNG key order exactly (needs --batch 1; "
                                       "the methods that implement it: {reference_methods})", choices=KEY_ORDERS)
    noise: str | None = setting(None, "mutation-noise generator (default threefry, as the reference; hash: a "
                                      "counter hash, about 6%% faster per step)", choices=("hash", "threefry"))
    eval_batch_size: int | None = setting(None, "children per jax.lax.map batch during evaluation (default: 1 on "
                                                "CPUs, all on GPUs and TPUs)", type=positive_int)
    train_size: int | None = setting(None, "mnist/fashion-mnist: use the first N training images", type=positive_int)


@dataclasses.dataclass(frozen=True)
class MergeSettings(RunSettings):
    """Settings of ``m2n2 merge`` (the models' fingerprint is recorded beside them)."""

    models: list | None = setting(None, "two or more model files: .npy / .npz (flat vector, FILE.npz@INDEX of a "
                                        "stack, or one array per parameter path), .msgpack (flax.serialization), "
                                        "an orbax checkpoint directory, a Hugging Face Llama-family directory or "
                                        "a .gguf file", positional=True, nargs="*", metavar="MODEL")
    forward_passes: int = setting(10_000, "children evaluated per run", type=positive_int)
    archive: str = setting("dense", "'dense': the archive holds P models; 'recipes': members are stored as "
                                    "piecewise combinations of the inputs (no mutation), so memory is the K inputs "
                                    "plus one working copy: for large models such as LLMs",
                           choices=("dense", "recipes"))
    scoring_dtype: str = setting("float32", "--archive recipes: dtype in which children (and the inputs kept on "
                                            "each device) are materialised for scoring (bfloat16 halves their "
                                            "memory)", choices=("float32", "bfloat16"))


# Algorithm options among the settings, handed to methods.prepare (which refuses those a method does not honour).
ALGORITHM_OPTIONS = ("batch", "archive_size", "alpha", "mutation_std", "noise", "sigma", "key_order")


def defaults(settings_class) -> dict:
    """{name: default} of every setting (the dict a checkpoint records, None meaning "not given")."""
    return {f.name: f.default for f in dataclasses.fields(settings_class)}


def add_settings(parser: argparse.ArgumentParser, settings_class, **lists: str) -> None:
    """Declare every field of ``settings_class`` as an option of ``parser``; ``lists`` fill the helps' {names}."""
    for field in dataclasses.fields(settings_class):
        options = dict(field.metadata["argparse"])
        positional, flag = options.pop("positional", False), options.pop("flag", None)
        help_text = field.metadata["help"].format(**lists)
        if field.default is not None:
            help_text += f" (default {field.default})"
        if positional:
            parser.add_argument(field.name, help=help_text, **options)
        else:
            parser.add_argument(flag or "--" + field.name.replace("_", "-"), dest=field.name, default=None,
                                help=help_text, **options)


def given_settings(args, settings_class) -> dict:
    """The settings given on the command line (an option left out, or an empty list, is not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)
            if getattr(args, f.name) not in (None, [])}


def add_run_control(parser: argparse.ArgumentParser, default_out: str, checkpoint_every: int) -> None:
    """How evolve and merge carry a run out: data, output directory, checkpoints, devices, hosts, progress."""
    parser.add_argument("--data-dir", help="mnist/fashion-mnist data directory (default $M2N2_DATA_DIR or ~/.cache)")
    parser.add_argument("--out", help=f"output directory (default {default_out})")
    parser.add_argument("--overwrite", action="store_true", help="replace results and checkpoints already in --out")
    parser.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose --out was DIR")
    parser.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                        help=f"save a checkpoint every N forward passes per run (default {checkpoint_every})")
    parser.add_argument("--checkpoint-seconds", type=non_negative_float, default=300.0,
                        help="and at least every T seconds (default 300; 0 disables the timer)")
    parser.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")
    group = parser.add_argument_group("multi-host runs (one process per host, all started with the same options)")
    group.add_argument("--distributed", action="store_true",
                       help="start JAX's multi-controller runtime (jax.distributed.initialize) and spread runs or "
                            "children over the devices of all processes; alone, JAX detects TPU pods, SLURM and "
                            "Open MPI; process 0 writes the results")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    group.add_argument("--num-processes", type=positive_int, help="number of processes (implies --distributed)")
    group.add_argument("--process-id", type=non_negative_int, help="this process's index, 0..N-1 (implies --distributed)")
    add_cpu_devices(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_cpu_devices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-devices", type=positive_int,
                        help="on a CPU, expose N devices (default: one per core, at most 8) so that runs advance "
                             "in parallel; 1 keeps a single device. Ignored on GPUs and TPUs")
