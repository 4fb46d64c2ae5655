"""Checkpoints of whole evolutions with orbax-checkpoint.

A checkpoint holds the compiled program's state (archives, scores, PRNG keys,
counters: a :class:`~m2n2_jax.runner.RunsState`) as arrays, and a JSON item
with everything else a resumed run needs (its settings, the curves logged so
far, progress and elapsed time). Steps are forward passes per run.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a process killed mid-save leaves no half checkpoint behind; a
finalised checkpoint that still fails to load (a damaged disk, a file edited
by hand) is skipped with a warning in favour of the previous one.
"""
from __future__ import annotations

import logging
import os
import warnings

import jax
import numpy as np

from .distributed import host_tree  # multi-host: every process saves the gathered state
from .errors import M2N2Error

FORMAT_VERSION = 2  # 2: archive states carry a PRNG key (the reference order lives in the strategy)
SUBDIR = "checkpoints"


class CheckpointError(M2N2Error):
    """No usable checkpoint where one was expected."""


def _orbax():
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO
    return ocp


class RunCheckpointer:
    """Save and restore (state, meta) pairs under ``directory/checkpoints``."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        ocp = _orbax()
        self.path = os.path.abspath(os.path.join(directory, SUBDIR))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.path, options=options, item_names=("state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        ocp = _orbax()
        meta = {**meta, "format": FORMAT_VERSION, "step": int(step)}
        if int(step) in self._manager.all_steps():  # e.g. a damaged one we fell back from
            self._manager.delete(int(step))
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, target_state):
        """(state, meta) of the newest checkpoint that loads, or raise CheckpointError."""
        ocp = _orbax()
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.path}; start the run without --resume "
                                  "(or point --resume at the directory the run wrote).")
        target = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), host_tree(target_state))
        for step in reversed(steps):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
                meta = dict(restored["meta"])
                if meta.get("format") != FORMAT_VERSION or meta.get("step") != step:
                    raise ValueError(f"unexpected checkpoint metadata {meta.get('format')!r}/{meta.get('step')!r}")
                return restored["state"], meta
            except Exception as err:  # a damaged checkpoint: fall back to the previous one
                warnings.warn(f"checkpoint at step {step} in {self.path} is incomplete or corrupt "
                              f"({type(err).__name__}: {str(err)[:200]}); trying the previous one.",
                              stacklevel=2)
        raise CheckpointError(f"none of the checkpoints {steps} in {self.path} could be read; "
                              "start again with --overwrite.")

    def latest_meta(self) -> dict:
        """The JSON item of the newest readable checkpoint (settings, progress), without its arrays."""
        ocp = _orbax()
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.path}; nothing to resume. Start the run without "
                                  "--resume, or point --resume at the --out directory of an interrupted run.")
        for step in reversed(steps):
            try:
                meta = dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                if meta.get("step") == step:
                    return meta
            except Exception as err:
                warnings.warn(f"checkpoint at step {step} in {self.path} is unreadable ({type(err).__name__}); "
                              "trying the previous one.", stacklevel=2)
        raise CheckpointError(f"none of the checkpoints {steps} in {self.path} could be read; "
                              "start again with --overwrite.")

    def close(self) -> None:
        self._manager.close()


def has_checkpoint(directory: str) -> bool:
    path = os.path.join(directory, SUBDIR)
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))
