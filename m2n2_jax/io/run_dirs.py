"""A run's output directory: one run per directory, and what an interrupted run was started with.

:func:`prepare_output_dir` refuses to mix two runs in one directory unless told to resume or
overwrite; :func:`resume_settings` reads the settings an interrupted run recorded in its
checkpoint and refuses a resume that asks for different ones.
"""
from __future__ import annotations

import os
import shutil

from m2n2_jax.engine.checkpoint import SUBDIR, has_checkpoint, read_latest_meta
from m2n2_jax.errors import ConfigError

# Settings whose default changed between versions (the noise generator's did): a run that left
# one at its default resumes with the value it actually used, as its config records.
_DEFAULTS_THAT_CHANGED = ("noise",)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_settings(directory: str, given: dict, defaults: dict, recorded_as: str) -> tuple[dict, dict]:
    """(settings, identity) of the interrupted run in ``directory``.

    given: the settings asked for now (absent: not given); defaults: every setting's default;
    recorded_as: the key of the run identity under which the settings were recorded (the
    seed is recorded once, as the identity's seeds). settings: the recorded ones over the
    defaults; identity: the checkpoint's (the resumed run must agree with it again). A given
    setting that differs from the recorded one is refused in one line.
    """
    if not os.path.isdir(directory) or not has_checkpoint(directory):
        raise ConfigError(f"--resume {directory}: no checkpoint there; point it at the --out directory of a "
                          "run that was interrupted (it holds a checkpoints/ folder).")
    identity = read_latest_meta(directory)["identity"]
    saved = {"seed": identity["seeds"][0], **identity[recorded_as]}
    for key in _DEFAULTS_THAT_CHANGED:
        if key in defaults and saved.get(key) is None and key in identity.get("config", {}):
            saved[key] = identity["config"][key]
    diff = [f"{_flag(k)} (checkpoint {saved.get(k)!r}, given {v!r})" for k, v in given.items() if saved.get(k) != v]
    if diff:
        raise ConfigError("cannot resume with different settings: " + "; ".join(diff) +
                          ". Drop those options to continue the run as it was started.")
    return {**defaults, **saved}, identity


def prepare_output_dir(out: str, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready for a new run, refusing one that holds another run unless ``overwrite``."""
    if resume:
        return
    has_results = os.path.exists(os.path.join(out, "results.json"))
    if (has_results or has_checkpoint(out)) and not overwrite:
        what = "a finished run's results.json" if has_results else "checkpoints of an unfinished run"
        raise ConfigError(f"{out} already holds {what}; pass --resume {out} to continue it, --overwrite to "
                          "replace it, or choose another --out.")
    if overwrite:
        shutil.rmtree(os.path.join(out, SUBDIR), ignore_errors=True)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".m2n2-write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"cannot write to output directory {out}: {err.strerror}; choose a writable --out.") from None
