"""What evolve and merge share when they start a run: settings, the task, and how it is run."""
from __future__ import annotations

import dataclasses
import sys

from m2n2_jax.cli.options import ALGORITHM_OPTIONS, defaults, given_settings
from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.errors import ConfigError
from m2n2_jax.io.run_dirs import resume_settings
from m2n2_jax.methods.registry import get
from m2n2_jax.tasks import PLUGIN_ALIASES, get_task
from m2n2_jax.tasks.custom import is_plugin_spec, load_task_factory, parse_task_args, plugin_task, takes_argument

RECORDED_AS = "cli"  # the key of the run identity under which the command's settings are recorded


@dataclasses.dataclass(frozen=True)
class Settings:
    """A command's settings: values (given options over defaults, or the checkpoint's when resuming)
    and, when resuming, the checkpoint's identity."""

    values: dict
    resumed: dict | None = None

    def __getitem__(self, name: str):
        return self.values[name]

    def recorded(self) -> dict:
        """What the checkpoint records (compared again on resume); the seed is recorded as the run's seeds."""
        if self.resumed is not None:
            return self.resumed[RECORDED_AS]
        return {k: v for k, v in self.values.items() if k != "seed"}

    def seeds(self) -> list[int]:
        return list(range(self.values["seed"], self.values["seed"] + self.values["runs"]))

    def algorithm(self) -> dict:
        """The algorithm options among the settings (None: not given)."""
        return {k: self.values.get(k) for k in ALGORITHM_OPTIONS if k in self.values}


def resolve(args, settings_class) -> Settings:
    """The run's settings: given options over defaults, or the checkpoint's when resuming (refusing changes)."""
    given, every = given_settings(args, settings_class), defaults(settings_class)
    if not args.resume:
        return Settings({**every, **given})
    values, identity = resume_settings(args.resume, given, every, RECORDED_AS)
    return Settings(values, identity)


def task_of(settings: Settings, args, first_model: str | None = None, **options):
    """The task the settings name: built-in (with its options) or a plugin (with its --task-arg values).

    A plugin whose factory takes a ``model`` argument gets the first model being merged unless
    --task-arg model=... says otherwise (llm-exact-match reads the architecture and tokenizer from it).
    """
    spec = PLUGIN_ALIASES.get(settings["task"], settings["task"])
    if is_plugin_spec(spec):
        task_args = parse_task_args(settings["task_args"])
        factory = load_task_factory(spec)  # once: a file plugin is executed when loaded
        if first_model is not None and "model" not in task_args and takes_argument(factory, "model"):
            task_args["model"] = first_model
        given = [f"--{k.replace('_', '-')}" for k in ("hidden", "train_size") if settings.values.get(k) is not None]
        given += ["--data-dir"] if getattr(args, "data_dir", None) else []
        given += ["--matmul-precision"] if settings.values.get("matmul_precision") not in (None, "float32") else []
        if given:
            raise ConfigError(f"{', '.join(given)} configure the built-in tasks; pass a plugin's settings as "
                              "--task-arg KEY=VALUE.")
        return plugin_task(spec, factory, **task_args)
    if settings["task_args"]:
        raise ConfigError(f"--task-arg is for task plugins (module:function); the built-in task "
                          f"{settings['task']!r} takes none.")
    return get_task(settings["task"], hidden=settings["hidden"], data_dir=getattr(args, "data_dir", None),
                    matmul_precision=settings["matmul_precision"], **options)


def run_options(args, out: str, settings: Settings, method: str, extra: dict | None = None, **rest) -> RunOptions:
    """How the CLI runs a method: progress unless --quiet, checkpoints in --out unless --no-checkpoint."""
    if args.no_checkpoint or not get(method).checkpoints:
        if not args.no_checkpoint:
            print(f"m2n2: note: {method} runs without checkpoints (one quick sweep).", file=sys.stderr)
        return RunOptions(progress=not args.quiet, **rest)
    return RunOptions.saving(out, every=args.checkpoint_every, seconds=args.checkpoint_seconds,
                             resume=bool(args.resume), progress=not args.quiet,
                             identity_extra={RECORDED_AS: settings.recorded(), **(extra or {})}, **rest)
