"""The ``m2n2`` command line: a thin shell over the functional core.

Errors a user can fix (M2N2Error and argument mistakes) end with a one-line
message and exit status 2; Ctrl-C saves a checkpoint and exits with 130.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from m2n2_jax.errors import ConfigError, M2N2Error

# Settings that define a run (compared when resuming); None means "not given".
EVOLVE_DEFAULTS = {
    "task": "digits", "method": "m2n2", "init": "scratch", "runs": 1, "seed": 42, "forward_passes": None,
    "batch": 1, "log_every": None, "archive_size": None, "alpha": None, "mutation_std": None, "sigma": None,
    "key_order": "engine", "noise": None, "eval_batch_size": None, "hidden": None, "train_size": None,
    "matmul_precision": "float32", "task_args": None,
}
# Algorithm options, handed to methods.prepare (which refuses those a method does not honour).
ALGORITHM_OPTIONS = ("batch", "archive_size", "alpha", "mutation_std", "noise", "sigma", "key_order")
# Settings of a merge (compared when resuming, with the models' fingerprint).
MERGE_DEFAULTS = {
    "models": None, "task": "digits", "task_args": None, "method": "m2n2", "runs": 1, "seed": 42,
    "forward_passes": 10_000, "batch": 1, "log_every": None, "archive_size": None, "alpha": None,
    "mutation_std": None, "hidden": None, "matmul_precision": "float32", "archive": "dense",
    "scoring_dtype": "float32",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports mistakes in one line (no usage block) and exits with 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int, wanted: str):
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


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _add_output_options(parser, default_out: str, checkpoint_every: int) -> None:
    """--out, --overwrite, --resume and the checkpoint options, shared by evolve and merge."""
    parser.add_argument("--out", help=f"output directory (default {default_out})")
    parser.add_argument("--overwrite", action="store_true", help="replace results and checkpoints already in --out")
    parser.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose --out was DIR")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=checkpoint_every,
                        help=f"save a checkpoint every N forward passes per run (default {checkpoint_every})")
    parser.add_argument("--checkpoint-seconds", type=_non_negative_float, default=300.0,
                        help="and at least every T seconds (default 300; 0 disables the timer)")
    parser.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")


def _add_distributed_options(parser) -> None:
    """--distributed and the explicit coordinator options of a multi-host run (docs/multi-device.md)."""
    group = parser.add_argument_group("multi-host runs (one process per host, all started with the same options)")
    group.add_argument("--distributed", action="store_true",
                       help="start JAX's multi-controller runtime (jax.distributed.initialize) and spread runs or "
                            "children over the devices of all processes; alone, JAX detects TPU pods, SLURM and "
                            "Open MPI; process 0 writes the results")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    group.add_argument("--num-processes", type=_positive_int, help="number of processes (implies --distributed)")
    group.add_argument("--process-id", type=_non_negative_int, help="this process's index, 0..N-1 (implies --distributed)")


def build_parser() -> argparse.ArgumentParser:
    from m2n2_jax.methods.registry import ALL_METHODS, INITS, KEY_ORDERS, names
    from m2n2_jax.tasks import TASKS

    parser = OneLineParser(prog="m2n2", description="M2N2: evolve and merge models with natural niches.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    ev = sub.add_parser("evolve", help="run one method for R runs and write results.json and curves.png")
    ev.add_argument("--task", help=f"task name ({', '.join(TASKS)}; default digits) or a plugin "
                                   "module:function / path/to/file.py:function returning a Task")
    ev.add_argument("--task-arg", dest="task_args", action="append", metavar="KEY=VALUE",
                    help="keyword argument for a task plugin (repeatable; VALUE is read as JSON if it parses)")
    ev.add_argument("--method", help=f"one of {', '.join(ALL_METHODS)}; default m2n2")
    ev.add_argument("--init", choices=INITS,
                    help="'scratch' (default): N(0, 0.01^2) seeds; 'pretrained': merge the two cached pre-trained "
                         "models (no mutation, default budget 10000)")
    ev.add_argument("--runs", type=_positive_int, help="independent runs, batched together (default 1)")
    ev.add_argument("--seed", type=_non_negative_int, help="run r uses seed S + r (default 42, as the paper)")
    ev.add_argument("--forward-passes", type=_positive_int,
                    help="children evaluated per run (default 50000 from scratch, 10000 from pre-trained)")
    ev.add_argument("--batch", type=_positive_int, help="children per step from one archive snapshot (default 1)")
    ev.add_argument("--log-every", type=_positive_int,
                    help="log test accuracy every K forward passes (default: about 500 points)")
    ev.add_argument("--archive-size", type=_positive_int, help="archive size P (default 20)")
    ev.add_argument("--alpha", type=_non_negative_float, help="competition exponent (method's default)")
    ev.add_argument("--mutation-std", type=_non_negative_float,
                    help="mutation std (default 0.01 from scratch, 0 from pre-trained)")
    ev.add_argument("--sigma", type=_non_negative_float,
                    help="initial step size of an evosax strategy (default: the method's, see docs)")
    ev.add_argument("--key-order", choices=KEY_ORDERS,
                    help="'reference' follows the authors' PRNG key order exactly (needs --batch 1; the methods "
                         "that implement it: " + ", ".join(names(lambda m: "reference" in m.key_orders)) + ")")
    ev.add_argument("--noise", choices=("hash", "threefry"), help="mutation-noise generator (default threefry, as the reference; hash: a "
                         "counter hash, about 6%% faster per step)")
    ev.add_argument("--eval-batch-size", type=_positive_int,
                    help="children per jax.lax.map batch during evaluation (default: 1 on CPUs, all on GPUs and TPUs)")
    ev.add_argument("--hidden", type=_positive_int, help="hidden units of the MLP (default 256, as the paper)")
    ev.add_argument("--matmul-precision", choices=("float32", "bfloat16"),
                    help="precision of the matmuls that score children on the training set (default float32). "
                         "bfloat16 rounds their operands to bf16 and accumulates in float32, as TPUs do by "
                         "default; about 1.5x faster on CPUs with AVX512-BF16. Test accuracy is always float32")
    ev.add_argument("--train-size", type=_positive_int, help="mnist/fashion-mnist: use the first N training images")
    ev.add_argument("--data-dir", help="mnist/fashion-mnist data directory (default $M2N2_DATA_DIR or ~/.cache)")
    _add_output_options(ev, default_out="runs/TASK-METHOD", checkpoint_every=5000)
    _add_distributed_options(ev)
    ev.add_argument("--devices", type=_positive_int, help="use at most N local devices (default all)")
    ev.add_argument("--cpu-devices", type=_positive_int,
                    help="on a CPU, expose N devices (default: one per core, at most 8) so that runs advance "
                         "in parallel; 1 keeps a single device. Ignored on GPUs and TPUs")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    mg = sub.add_parser("merge", help="merge your models (files of one architecture) into one with M2N2 and "
                                      "write merged.EXT, results.json, table.md, curves.png")
    mg.add_argument("models", nargs="*", metavar="MODEL",
                    help="two or more model files: .npy / .npz (flat vector, FILE.npz@INDEX of a stack, or one "
                         "array per parameter path), .msgpack (flax.serialization) or an orbax checkpoint directory")
    mg.add_argument("--task", help=f"what to score the models on: {', '.join(TASKS)} (default digits), "
                                   "llm-exact-match (Llama directories; --task-arg data=FILE.jsonl "
                                   "[test_data=FILE.jsonl]) or a plugin module:function / path/to/file.py:function "
                                   "returning a Task")
    mg.add_argument("--task-arg", dest="task_args", action="append", metavar="KEY=VALUE",
                    help="keyword argument for a task plugin (repeatable)")
    mg.add_argument("--method", help="one of " + ", ".join(names(lambda m: m.merges)) + "; default m2n2")
    mg.add_argument("--archive", choices=("dense", "recipes"),
                    help="'dense' (default): the archive holds P models; 'recipes': members are stored as "
                         "piecewise combinations of the inputs (no mutation), so memory is the K inputs plus one "
                         "working copy: for large models such as LLMs")
    mg.add_argument("--scoring-dtype", choices=("float32", "bfloat16"),
                    help="--archive recipes: dtype in which children (and the inputs kept on each device) are "
                         "materialised for scoring (default float32; bfloat16 halves their memory)")
    mg.add_argument("--runs", type=_positive_int, help="independent runs (default 1); merged.EXT is the best run's")
    mg.add_argument("--seed", type=_non_negative_int, help="run r uses seed S + r (default 42)")
    mg.add_argument("--forward-passes", type=_positive_int, help="children evaluated per run (default 10000)")
    mg.add_argument("--batch", type=_positive_int, help="children per step (default 1)")
    mg.add_argument("--log-every", type=_positive_int, help="log metrics every K forward passes")
    mg.add_argument("--archive-size", type=_positive_int, help="archive size P (default 20)")
    mg.add_argument("--alpha", type=_non_negative_float, help="competition exponent (default 1)")
    mg.add_argument("--mutation-std", type=_non_negative_float, help="mutation std (default 0: pure merging)")
    mg.add_argument("--hidden", type=_positive_int, help="built-in tasks: hidden units of the MLP (default 256)")
    mg.add_argument("--matmul-precision", choices=("float32", "bfloat16"),
                    help="built-in tasks: precision of the scoring matmuls (default float32)")
    mg.add_argument("--data-dir", help="mnist/fashion-mnist data directory")
    _add_output_options(mg, default_out="runs/merge-TASK", checkpoint_every=2000)
    _add_distributed_options(mg)
    mg.add_argument("--cpu-devices", type=_positive_int, help="on a CPU, expose N devices (default one per core)")
    mg.add_argument("--quiet", action="store_true", help="no progress bar")

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
    bench.add_argument("--cpu-devices", type=_positive_int, help="CPU devices for the multi-device rows "
                       "(default: one per core, at most 8)")
    from m2n2_jax.llm.chat import add_arguments as chat_arguments

    chat_arguments(sub.add_parser("chat", help="greedy answers of a language model (HF directory or .gguf file)"))
    return parser


def resolve_settings(args, defaults: dict = EVOLVE_DEFAULTS) -> dict:
    """The run's settings: given options over defaults, or the checkpoint's when resuming."""
    given = {k: getattr(args, k) for k in defaults if getattr(args, k) not in (None, [])}
    if not args.resume:
        return {**defaults, **given}
    from m2n2_jax.engine.checkpoint import has_checkpoint, read_latest_meta

    if not os.path.isdir(args.resume) or not has_checkpoint(args.resume):
        raise ConfigError(f"--resume {args.resume}: no checkpoint there; point it at the --out directory of a "
                          "run that was interrupted (it holds a checkpoints/ folder).")
    identity = read_latest_meta(args.resume)["identity"]
    args.resumed_identity = identity
    saved = dict(identity["cli"])
    # Defaults can change between versions (the noise generator did): an option the run left at
    # its default resumes with the value the run actually used, as its config records.
    args.identity_cli = identity["cli"]  # what the checkpoint's identity holds, compared again on resume
    for key in ("noise",):
        if key in defaults and saved.get(key) is None and key in identity.get("config", {}):
            saved[key] = identity["config"][key]
    diff = [f"--{k.replace('_', '-')} (checkpoint {saved.get(k)!r}, given {v!r})" for k, v in given.items()
            if saved.get(k) != v]
    if diff:
        raise ConfigError("cannot resume with different settings: " + "; ".join(diff) +
                          ". Drop those options to continue the run as it was started.")
    return {**defaults, **saved}


def algorithm_settings(settings: dict) -> dict:
    """The algorithm options among a command's settings (None: not given)."""
    return {k: settings.get(k) for k in ALGORITHM_OPTIONS if k in settings}


def run_options(args, out: str, settings: dict, method: str, extra: dict | None = None, **rest):
    """How the CLI runs a method: progress unless --quiet, checkpoints in --out unless --no-checkpoint."""
    from m2n2_jax.engine.chunk_loop import RunOptions
    from m2n2_jax.methods.registry import get

    if args.no_checkpoint or not get(method).checkpoints:
        if not args.no_checkpoint:
            print(f"m2n2: note: {method} runs without checkpoints (one quick sweep).", file=sys.stderr)
        return RunOptions(progress=not args.quiet, **rest)
    return RunOptions.saving(out, every=args.checkpoint_every, seconds=args.checkpoint_seconds,
                             resume=bool(args.resume), progress=not args.quiet,
                             identity_extra={"cli": getattr(args, "identity_cli", settings), **(extra or {})}, **rest)


def cmd_evolve(args) -> int:
    import resource

    import jax
    import numpy as np

    from m2n2_jax.io import results
    from m2n2_jax.engine import distributed
    from m2n2_jax.methods.registry import DEFAULT_FORWARD_PASSES, INITS, get, prepare

    settings = resolve_settings(args)
    method, init = settings["method"], settings["init"]
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose 'scratch' or 'pretrained'.")
    forward_passes = settings["forward_passes"] or DEFAULT_FORWARD_PASSES[init]
    out = args.resume or args.out or os.path.join(
        "runs", f"{settings['task']}-{method}" + ("-pretrained" if init == "pretrained" else ""))
    task = _task_of(settings, args, train_size=settings["train_size"])
    seeds = list(range(settings["seed"], settings["seed"] + settings["runs"]))
    if get(method).family in ("engine", "map-elites"):  # memory known before work starts (one line if short)
        from m2n2_jax.engine.memory import check_evolve

        check_evolve(task.num_params, 2, len(seeds), settings["archive_size"] or (20 if get(method).family == "engine"
                     else 100), settings["batch"], len(jax.local_devices()))
    run = prepare(method, task, seeds, forward_passes, init=init, log_every=settings["log_every"],
                  **algorithm_settings(settings))  # every check, before anything is written
    distributed.main_first(_prepare_output, out, args)  # multi-host: process 0 prepares, the others wait
    devices = None
    if args.devices:
        available = jax.devices()  # one process: its local devices; multi-host: all processes' devices
        if args.devices > len(available):
            where = "local" if jax.process_count() == 1 else "(all processes')"
            raise ConfigError(f"--devices {args.devices} but only {len(available)} {where} device(s) exist; "
                              f"pass --devices {len(available)} or fewer.")
        devices = available[:args.devices]
    distributed.is_main() and print(f"m2n2 evolve: task={task.name} method={method} init={init} runs={len(seeds)} "
          f"seeds={seeds[0]}..{seeds[-1]} forward_passes={forward_passes} batch={settings['batch']} -> {out}"
          f"{' (resuming)' if args.resume else ''}", file=sys.stderr)
    res = run(run_options(args, out, settings, method, devices=devices, eval_batch_size=settings["eval_batch_size"]))
    if not distributed.is_main():  # multi-host: every process has the results, process 0 writes them
        return 0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    record = results.results_record(
        method=method, task=task.name, seeds=seeds, forward_passes=res.forward_passes,
        metrics=res.metrics, wall_seconds=res.wall_seconds,
        config={**res.config, **{k: v for k, v in settings.items() if v is not None},
                "forward_passes": forward_passes, "task_info": task.info},
        extra={**res.extra, "peak_rss_mb": round(peak_mb, 1)}, headline=task.headline_metric)
    results_path = os.path.join(out, "results.json")
    results.write_json(results_path, record)
    results.plot_curves(os.path.join(out, "curves.png"), [record])
    np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best_vectors(),
                        seeds=np.asarray(seeds))
    print(f"final {task.headline_metric.replace('_', ' ')}: mean {record['final_mean']:.4f} ± "
          f"{record['final_sem']:.4f} (sem) over "
          f"{len(seeds)} run(s); {record['forward_passes_per_second']:.0f} forward passes/s; peak RSS "
          f"{peak_mb:.0f} MB; wrote {results_path}, curves.png, best_models.npz")
    return 0


def _task_of(settings: dict, args, first_model: str | None = None, **options):
    """The task the settings name: built-in (with its options) or a plugin (with its --task-arg values).

    A plugin whose factory takes a ``model`` argument gets the first model being merged unless
    --task-arg model=... says otherwise (llm-exact-match reads the architecture and tokenizer from it).
    """
    from m2n2_jax.tasks import PLUGIN_ALIASES, get_task
    from m2n2_jax.tasks.custom import is_plugin_spec, load_task_factory, parse_task_args, plugin_task, takes_argument

    spec = PLUGIN_ALIASES.get(settings["task"], settings["task"])
    if is_plugin_spec(spec):
        task_args = parse_task_args(settings["task_args"])
        factory = load_task_factory(spec)  # once: a file plugin is executed when loaded
        if first_model is not None and "model" not in task_args and takes_argument(factory, "model"):
            task_args["model"] = first_model
        given = [f"--{k.replace('_', '-')}" for k in ("hidden", "train_size") if settings.get(k) is not None]
        given += ["--data-dir"] if getattr(args, "data_dir", None) else []
        given += ["--matmul-precision"] if settings.get("matmul_precision") not in (None, "float32") else []
        if given:
            raise ConfigError(f"{', '.join(given)} configure the built-in tasks; pass a plugin's settings as "
                              "--task-arg KEY=VALUE.")
        return plugin_task(spec, factory, **task_args)
    if settings["task_args"]:
        raise ConfigError(f"--task-arg is for task plugins (module:function); the built-in task "
                          f"{settings['task']!r} takes none.")
    return get_task(settings["task"], hidden=settings["hidden"], data_dir=getattr(args, "data_dir", None),
                    matmul_precision=settings["matmul_precision"], **options)


def cmd_merge(args) -> int:
    import numpy as np

    from m2n2_jax.engine import distributed
    from m2n2_jax.methods import merge_models
    from m2n2_jax.methods import registry as methods
    from m2n2_jax.io import model_files

    settings = resolve_settings(args, MERGE_DEFAULTS)
    paths = settings["models"] or []
    if len(paths) < 2:
        raise ConfigError(f"m2n2 merge needs at least two model files (got {len(paths)}); "
                          "e.g. m2n2 merge a.msgpack b.msgpack --task digits --out runs/merged.")
    method = settings["method"]
    methods.check(method, "pretrained", num_models=len(paths), archive=settings["archive"])
    task = _task_of(settings, args, first_model=paths[0])
    vectors = np.stack([model_files.load_model(p, task.layout) for p in paths])
    from m2n2_jax.algorithm.flatten import check_finite_seeds

    check_finite_seeds(vectors)
    task = merge_models.with_seed_models(task, vectors)
    if args.resume:
        started = args.resumed_identity.get("models_sha256")
        if started not in (None, merge_models.fingerprint(vectors)):
            raise ConfigError(f"--resume {args.resume}: the model files ({', '.join(paths)}) changed since this "
                              "merge started; put the original files back, or start a new merge in another --out.")
    if not args.resume:  # memory known before work starts: keep, switch (announced) or refuse in one line
        from m2n2_jax.engine import memory
        import jax

        spec = methods.get(method)
        settings["archive"] = memory.plan_merge(
            task.num_params, settings["archive"], args.archive is not None, len(paths), settings["runs"],
            settings["archive_size"] or 20, settings["batch"], len(jax.local_devices()),
            spec.recipes and not settings["mutation_std"], say=lambda line: print(line, file=sys.stderr))
    out = args.resume or args.out or os.path.join("runs", f"merge-{os.path.basename(settings['task'])}")
    seeds = list(range(settings["seed"], settings["seed"] + settings["runs"]))
    run = methods.prepare(method, task, seeds, settings["forward_passes"], init="pretrained",
                          log_every=settings["log_every"], archive=settings["archive"],
                          scoring_dtype=settings["scoring_dtype"],
                          **algorithm_settings(settings))
    distributed.main_first(_prepare_output, out, args)  # multi-host: process 0 prepares, the others wait
    distributed.is_main() and print(f"m2n2 merge: {len(paths)} models, task={task.name} method={method} "
                                    f"runs={len(seeds)} forward_passes={settings['forward_passes']} -> {out}"
                                    f"{' (resuming)' if args.resume else ''}", file=sys.stderr)
    res = run(run_options(args, out, settings, method, extra={"models_sha256": merge_models.fingerprint(vectors)}))
    if distributed.is_main():  # multi-host: process 0 writes
        _write_merge_outputs(out, paths, settings, task, vectors, res, seeds)
    return 0


def _write_merge_outputs(out: str, paths, settings: dict, task, vectors, res, seeds) -> None:
    """merged.EXT, results.json, curves.png, table.md (and best_models.npz for dense archives)."""
    import numpy as np

    from m2n2_jax.methods import merge_models
    from m2n2_jax.io import model_files
    from m2n2_jax.io import results

    method = settings["method"]
    headline = task.headline_metric
    inputs = merge_models.describe_models(task, vectors)
    merged_rows = merge_models.describe_models(task, res.best)
    best = merge_models.best_run([row["train_score"] for row in merged_rows])  # the models written, not the curves
    merged_file = model_files.save_model(model_files.merged_path(out, paths[0]), res.best[best], task.layout,
                                         like=paths[0])
    record = results.results_record(
        method=method, task=task.name, seeds=seeds, forward_passes=res.forward_passes, metrics=res.metrics,
        wall_seconds=res.wall_seconds, headline=headline,
        config={**res.config, **{k: v for k, v in settings.items() if v is not None}, "task_info": task.info},
        extra={**res.extra, "models": [{"path": p, **row} for p, row in zip(paths, inputs)],
               "merged": {"path": merged_file, "run": best, "seed": seeds[best], **merged_rows[best]},
               "merged_per_run": merged_rows})
    results.write_json(os.path.join(out, "results.json"), record)
    results.plot_curves(os.path.join(out, "curves.png"), [record],
                        references={f"model {i} ({os.path.basename(p.rstrip('/'))})": row.get(headline, row["train_score"])
                                    for i, (p, row) in enumerate(zip(paths, inputs))})
    names = [f"input {i}: `{p}`" for i, p in enumerate(paths)] + [f"**merged** (run {best}, seed {seeds[best]})"]
    rows = inputs + [merged_rows[best]]
    if len(seeds) > 1:
        names.append(f"merged, mean of {len(seeds)} runs")
        rows.append({k: float(np.mean([r[k] for r in merged_rows])) for k in merged_rows[0]})
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(f"# m2n2 merge: {method} on {task.name}, {settings['forward_passes']:,} forward passes per run\n\n"
                + merge_models.table_markdown(names, rows, headline)
                + "\nTrain score: mean per-datapoint score on the data the search sees. The merged model is the "
                  "archive member with the highest train score of the run whose member scores highest.\n")
    if settings["archive"] == "dense":  # with recipes the models may be huge: only the merge is written
        np.savez_compressed(os.path.join(out, "best_models.npz"), best_vectors=res.best, seeds=np.asarray(seeds))
    best_input = max(range(len(paths)), key=lambda i: inputs[i]["train_score"])
    kept = res.extra.get("reported", [{}] * len(seeds))[best]
    if kept.get("model", "merge") != "merge":
        print(f"m2n2 merge: {kept['why']}; {merged_file} is {paths[kept['best_input']]}.", file=sys.stderr)
    print(f"merged: train score {merged_rows[best]['train_score']:.4f} (best input {inputs[best_input]['train_score']:.4f})"
          + (f", {headline.replace('_', ' ')} {merged_rows[best][headline]:.4f} (inputs "
             + ", ".join(f"{r[headline]:.4f}" for r in inputs) + ")" if headline in merged_rows[best] else "")
          + f"; wrote {merged_file}, results.json, table.md, curves.png")


def cmd_compare(args) -> int:
    import shlex

    from m2n2_jax.io import compare
    from m2n2_jax.methods.registry import check

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


def _prepare_output(out: str, args) -> None:
    """Refuse to mix two runs in one directory unless told to resume or overwrite."""
    from m2n2_jax.engine.checkpoint import SUBDIR, has_checkpoint

    if args.resume:
        return
    has_results = os.path.exists(os.path.join(out, "results.json"))
    if (has_results or has_checkpoint(out)) and not args.overwrite:
        what = "a finished run's results.json" if has_results else "checkpoints of an unfinished run"
        raise ConfigError(f"{out} already holds {what}; pass --resume {out} to continue it, --overwrite to "
                          "replace it, or choose another --out.")
    if args.overwrite:
        shutil.rmtree(os.path.join(out, SUBDIR), ignore_errors=True)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".m2n2-write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"cannot write to output directory {out}: {err.strerror}; choose a writable --out.") from None


def cmd_bench(args) -> int:
    from m2n2_jax.bench import run_benchmark

    run_benchmark(forward_passes=args.forward_passes, loop_forward_passes=args.loop_forward_passes,
                  repeats=args.repeats, out=args.out)
    return 0


MAX_AUTO_CPU_DEVICES = 8


def expose_cpu_devices(count: int | None) -> int:
    """Split the host CPU into ``count`` XLA devices (default one per core, at most 8).

    Independent runs then advance in parallel, one group per device, which
    also parallelises the small per-run operations that a single device runs
    one after another. XLA reads the device count from XLA_FLAGS once, when
    JAX starts its backends; so the flag is set only for that moment (JAX is
    started here) and XLA_FLAGS is then put back as it was, so that processes
    started later (``m2n2 compare`` runs each method in one) and the user's
    own code see the environment unchanged. Does nothing when XLA_FLAGS
    already sets a device count or JAX's backends are already up. Returns the
    count asked for.
    """
    count = count or min(os.cpu_count() or 1, MAX_AUTO_CPU_DEVICES)
    before = os.environ.get("XLA_FLAGS")
    if count <= 1 or "xla_force_host_platform_device_count" in (before or ""):
        return count
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return count
    os.environ["XLA_FLAGS"] = f"{before or ''} --xla_force_host_platform_device_count={count}".strip()
    try:
        jax.devices()  # starts the backends, which read the flag now
    finally:
        if before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = before
    return count


def _start_distributed(args) -> None:
    """Multi-host: start jax.distributed when --distributed or the coordinator options are given."""
    explicit = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if getattr(args, "distributed", False) or any(v is not None for v in explicit):
        from m2n2_jax.engine import distributed

        distributed.initialize(*explicit)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.command in ("evolve", "bench", "merge"):
        expose_cpu_devices(args.cpu_devices)
    try:
        _start_distributed(args)
        from m2n2_jax.llm.chat import run as cmd_chat

        return {"evolve": cmd_evolve, "merge": cmd_merge, "compare": cmd_compare,
                "bench": cmd_bench, "chat": cmd_chat}[args.command](args)
    except M2N2Error as err:
        from m2n2_jax.engine.evolution import Interrupted

        from m2n2_jax.engine import distributed

        distributed.report_start_failure(err)  # multi-host: the other processes stop too
        print(f"m2n2: {'stopped' if isinstance(err, Interrupted) else 'error'}: {err}", file=sys.stderr)
        return 130 if isinstance(err, Interrupted) else 2
    except KeyboardInterrupt:
        print("m2n2: stopped by the user before the run started; nothing to save.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
