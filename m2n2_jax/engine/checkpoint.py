"""Checkpoints of whole evolutions with orbax-checkpoint.

A checkpoint holds the compiled program's state (archives, scores, PRNG keys,
counters: a :class:`~m2n2_jax.engine.runner.RunsState`) as arrays, and a JSON item
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

from m2n2_jax.engine.distributed import host_tree  # multi-host: every process saves the gathered state
from m2n2_jax.errors import M2N2Error
from m2n2_jax.version import __version__

FORMAT_VERSION = 2  # 2: archive states carry a PRNG key (the reference order lives in the strategy)
SUBDIR = "checkpoints"


class CheckpointError(M2N2Error):
    """No usable checkpoint where one was expected."""


def load_orbax():
    """orbax.checkpoint, imported on first use (it is slow to import), with its per-save INFO logs off."""
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs every save at INFO
    return ocp


class RunCheckpointer:
    """Save and restore (state, meta) pairs under ``directory/checkpoints``."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        ocp = load_orbax()
        self.path = os.path.abspath(os.path.join(directory, SUBDIR))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.path, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        ocp = load_orbax()
        meta = {**meta, "format": FORMAT_VERSION, "version": __version__, "step": int(step)}
        if int(step) in self._manager.all_steps():  # e.g. a damaged one we fell back from
            self._manager.delete(int(step))
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, target_state):
        """(state, meta) of the newest checkpoint that loads, or raise CheckpointError.

        A checkpoint written by another version of the code (another format, or a
        state of another structure) is refused with what to do; only one whose
        files fail to load is skipped, with a warning, for the previous one.
        """
        ocp = load_orbax()
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.path}; start the run without --resume "
                                  "(or point --resume at the directory the run wrote).")
        target = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), host_tree(target_state))
        for step in reversed(steps):
            try:
                meta = dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                saved = _leaves(self._manager.item_metadata(step)["state"].tree)
            except Exception as err:  # a damaged checkpoint: fall back to the previous one
                self._warn_damaged(step, err)
                continue
            if meta.get("step") != step:
                self._warn_damaged(step, ValueError(f"its record says step {meta.get('step')!r}"))
                continue
            self._check_version(step, meta, saved, _leaves(target))
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
                return restored["state"], meta
            except Exception as err:  # a damaged checkpoint: fall back to the previous one
                self._warn_damaged(step, err)
        raise CheckpointError(f"none of the checkpoints {steps} in {self.path} could be read; "
                              "start again with --overwrite.")

    def _warn_damaged(self, step: int, err: Exception) -> None:
        warnings.warn(f"checkpoint at step {step} in {self.path} is incomplete or corrupt "
                      f"({type(err).__name__}: {str(err)[:200]}); trying the previous one.", stacklevel=3)

    def _check_version(self, step: int, meta: dict, saved: dict, expected: dict) -> None:
        """Refuse a checkpoint this code cannot read although its files are whole."""
        written = f"its record: m2n2-jax {meta.get('version', '0.1.0 or older')}, format {meta.get('format')!r}"
        advice = ("resume it with the version of m2n2-jax that wrote it, or start a new run in another --out "
                  "(--overwrite discards it)")
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"the checkpoint at step {step} in {self.path} was written by another version "
                                  f"of m2n2-jax ({written}; this is {__version__}, format {FORMAT_VERSION}); {advice}.")
        diff = [f"{k} is {saved.get(k, 'missing')} there, {expected.get(k, 'absent')} here"
                for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
        if diff:
            raise CheckpointError(f"the checkpoint at step {step} in {self.path} holds a state of another structure "
                                  f"({diff[0]}{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}): it was "
                                  f"written by another version of m2n2-jax or another method ({written}); {advice}.")

    def latest_meta(self) -> dict:
        """The JSON item of the newest readable checkpoint (settings, progress), without its arrays."""
        ocp = load_orbax()
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

    def __enter__(self) -> "RunCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_latest_meta(directory: str) -> dict:
    """The JSON item of the newest readable checkpoint under ``directory`` (its settings and progress)."""
    with RunCheckpointer(directory) as checkpointer:
        return checkpointer.latest_meta()


def _leaves(tree) -> dict:
    """{path: (shape, dtype)} of a pytree of arrays or of orbax's metadata of one (paths as plain names)."""
    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {"/".join(name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name) for path, leaf in flat}


def has_checkpoint(directory: str) -> bool:
    path = os.path.join(directory, SUBDIR)
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))
