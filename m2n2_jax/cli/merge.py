"""``m2n2 merge``: merge the user's model files into one with M2N2 (or another merging method).

To add an option: a run setting (recorded in checkpoints, compared on resume) is a field of
:class:`~m2n2_jax.cli.options.MergeSettings`; an option that chooses another way in (a
configuration file) or out (the merged file's format) goes in :func:`add_parser`, and its
handling in :func:`run` (reading or checking it before the run starts) or in
:func:`m2n2_jax.io.run_outputs.write_merge_outputs` (writing).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

import m2n2_jax.llm  # noqa: F401 (registers the Hugging Face and GGUF model files with io.model_files)
from m2n2_jax.algorithm.flatten import check_finite_seeds
from m2n2_jax.cli.options import MergeSettings, OneLineParser, add_run_control, add_settings
from m2n2_jax.cli.running import resolve, run_options, task_of
from m2n2_jax.engine import distributed, memory
from m2n2_jax.errors import ConfigError
from m2n2_jax.io import model_files
from m2n2_jax.io.run_dirs import prepare_output_dir
from m2n2_jax.io.run_outputs import write_merge_outputs
from m2n2_jax.methods import merge_models, mergekit_config
from m2n2_jax.methods import registry as methods
from m2n2_jax.tasks import TASKS


def add_parser(sub) -> None:
    parser = sub.add_parser("merge", help="merge your models (files of one architecture) into one with M2N2 and "
                                          "write merged.EXT, results.json, table.md, curves.png")
    add_settings(parser, MergeSettings, methods=", ".join(methods.names(lambda m: m.merges)),
                 tasks=", ".join(TASKS) + ", llm-exact-match (Llama directories; --task-arg data=FILE.jsonl "
                                          "[test_data=FILE.jsonl])")
    parser.add_argument("--config", metavar="FILE.yml", help="a mergekit YAML (merge_method, base_model, models, "
                        "parameters, dtype, ...): runs that merge into --out; merge_method m2n2 runs M2N2 with the "
                        "YAML's parameters (see README, 'mergekit YAML')")
    parser.add_argument("--out-format", choices=model_files.OUT_FORMATS,
                        help="language models: write merged.gguf (gguf) or a Hugging Face directory merged/ (hf; the "
                             "default); GGUF keeps the first input's metadata and tokenizer")
    parser.add_argument("--gguf-type", choices=("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"),
                        help="--out-format gguf: type of the weight matrices (default f32: the merge exactly)")
    add_run_control(parser, default_out="runs/merge-TASK", checkpoint_every=2000)


def _merge_arguments(argv: list[str]):
    """Parse ``m2n2 merge`` arguments (what a mergekit YAML with merge_method m2n2 stands for)."""
    parser = OneLineParser(prog="m2n2")
    add_parser(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    args = parser.parse_args(["merge", *argv])
    args.argv = ["merge", *argv]
    return args


def run(args) -> int:
    if args.config:  # a mergekit YAML: a classic merge runs here; M2N2 comes back as this command's arguments
        argv = mergekit_config.merge_from_config(args.config, args.out)
        if argv is None:
            return 0
        args = _merge_arguments(argv)
    settings = resolve(args, MergeSettings)
    paths = settings["models"] or []
    if len(paths) < 2:
        raise ConfigError(f"m2n2 merge needs at least two model files (got {len(paths)}); "
                          "e.g. m2n2 merge a.msgpack b.msgpack --task digits --out runs/merged.")
    method = settings["method"]
    methods.check(method, "pretrained", num_models=len(paths), archive=settings["archive"])
    model_files.check_out_format(paths[0], args.out_format, args.gguf_type)
    task = task_of(settings, args, first_model=paths[0])
    vectors = np.stack([model_files.load_model(p, task.layout) for p in paths])
    check_finite_seeds(vectors)
    task = merge_models.with_seed_models(task, vectors)
    if settings.resumed is not None:
        started = settings.resumed.get("models_sha256")
        if started not in (None, merge_models.fingerprint(vectors)):
            raise ConfigError(f"--resume {args.resume}: the model files ({', '.join(paths)}) changed since this "
                              "merge started; put the original files back, or start a new merge in another --out.")
    if not args.resume:  # memory known before work starts: keep, switch (announced) or refuse in one line
        settings.values["archive"] = memory.plan_merge(
            task.num_params, settings["archive"], args.archive is not None, len(paths), settings["runs"],
            settings["archive_size"] or 20, settings["batch"], len(jax.local_devices()),
            methods.get(method).recipes and not settings["mutation_std"],
            say=lambda line: print(line, file=sys.stderr), scoring_bytes=task.scoring_bytes)
    out = args.resume or args.out or os.path.join("runs", f"merge-{os.path.basename(settings['task'])}")
    seeds = settings.seeds()
    start = methods.prepare(method, task, seeds, settings["forward_passes"], init="pretrained",
                            log_every=settings["log_every"], archive=settings["archive"],
                            scoring_dtype=settings["scoring_dtype"], **settings.algorithm())
    distributed.main_first(prepare_output_dir, out, bool(args.resume), args.overwrite)  # multi-host: process 0 first
    distributed.is_main() and print(f"m2n2 merge: {len(paths)} models, task={task.name} method={method} "
                                    f"runs={len(seeds)} forward_passes={settings['forward_passes']} -> {out}"
                                    f"{' (resuming)' if args.resume else ''}", file=sys.stderr)
    res = start(run_options(args, out, settings, method, extra={"models_sha256": merge_models.fingerprint(vectors)}))
    if distributed.is_main():  # multi-host: process 0 writes
        print(write_merge_outputs(out, paths, settings.values, task, vectors, res, seeds, args.out_format,
                                  args.gguf_type))
    return 0
