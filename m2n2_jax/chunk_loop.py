"""The imperative loop around compiled chunks: progress, checkpoints and Ctrl-C.

The M2N2 engine (:func:`m2n2_jax.evolve`) and the baselines
(:func:`m2n2_jax.baselines.driver.drive`) both advance a batched state of R
runs with a compiled ``chunk(state, num_logs) -> (state, logged)``. This module
runs such chunks for a budget, appends what they log, advances a progress bar,
saves checkpoints every so many forward passes per run and every so many
seconds, and turns Ctrl-C into a saved checkpoint and :class:`Interrupted`.
Chunking never changes results, so a resumed run ends where an uninterrupted
one does.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from . import distributed
from .checkpoint import RunCheckpointer
from .errors import ConfigError, M2N2Error


class Interrupted(M2N2Error):
    """The user stopped the run (Ctrl-C); the message says where it was saved."""


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where and how often to save (directory None: never)."""

    directory: str | None = None
    every: int | None = None          # forward passes per run between saves (None: every chunk)
    seconds: float | None = None      # and at least this often in wall time
    resume: bool = False              # continue from the newest good checkpoint in ``directory``
    keep: int = 3                     # newest checkpoints kept (fewer for huge states)

    def checked(self) -> "Checkpointing":
        if self.every is not None and self.every <= 0:
            raise ConfigError(f"--checkpoint-every must be positive (got {self.every}).")
        if self.resume and not self.directory:
            raise ConfigError("resuming needs the run's directory (checkpoint_dir).")
        return self


def differing_fields(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields on which two identities differ."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return out


def check_identity(saved: dict, current: dict) -> None:
    """Refuse, naming the fields, to resume a checkpoint made with other settings."""
    diff = differing_fields(saved, current)
    if diff:
        raise ConfigError("the checkpoint was made with different settings: " + "; ".join(diff) +
                          ". Resume with the original settings, or start a new run in another --out.")


def restore(directory: str, state, identity: dict):
    """(state, history, done_logs, elapsed seconds) from the newest good checkpoint in ``directory``.

    ``state`` gives the structure to restore into. Refuses, naming the fields,
    a checkpoint made with other settings.
    """
    checkpointer = RunCheckpointer(directory)
    try:
        state, meta = checkpointer.restore_latest(state)
    finally:
        checkpointer.close()
    check_identity(meta["identity"], identity)
    state = jax.tree.map(jax.numpy.asarray, state)
    history = {k: [np.asarray(row, dtype=np.float32) for row in v] for k, v in meta["history"].items()}
    return state, history, int(meta["done_logs"]), float(meta["elapsed_seconds"])


class _StopOnCtrlC:
    """Turn the first Ctrl-C into a request to stop after the current chunk.

    Without it Python raises KeyboardInterrupt wherever the main thread happens to
    be, for instance in the middle of an orbax save (orbax writes atomically, so
    that cost a checkpoint, not a corrupt one). With it the chunk and its save
    complete, the loop stops at the chunk boundary, saves and raises
    :class:`Interrupted`; a second Ctrl-C aborts at once. Installed only from the
    main thread and only over Python's default handler: a process that ignores
    SIGINT (one started as a background job by a non-interactive shell inherits
    SIG_IGN) keeps ignoring it.
    """

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        import sys

        if self.requested:  # a second Ctrl-C: abort now
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        print("m2n2: stopping after the current chunk and saving; press Ctrl-C again to abort without saving.",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def run_chunks(chunk: Callable, state, history: dict, *, num_logs: int, sizes: list[int], fp_per_log: int,
               forward_passes: int, bar=None, checkpointing: Checkpointing = Checkpointing(),
               identity: dict | None = None, done_logs: int = 0, elapsed_before: float = 0.0,
               start: float | None = None, step_offset: int = 0, extra_meta: dict | Callable | None = None):
    """Advance ``state`` to ``num_logs`` log points in chunks of ``sizes``.

    history: {name: [per-log arrays]}, extended in place with what the chunks log.
    step_offset, extra_meta: added to every checkpoint's step and JSON item (runs done
    one after another share one directory this way); extra_meta may be a callable
    returning the dict at each save (state that is not arrays, e.g. recipes).
    Returns (state, wall seconds including those before a resume).
    """
    start = time.perf_counter() if start is None else start
    checkpointer = (RunCheckpointer(checkpointing.directory, max_to_keep=checkpointing.keep)
                    if checkpointing.directory else None)
    last_save_logs, last_save_time = done_logs, time.perf_counter()

    def save(logs_done):
        extra = extra_meta() if callable(extra_meta) else (extra_meta or {})
        meta = {**extra, "identity": identity, "done_logs": logs_done,
                "elapsed_seconds": elapsed_before + time.perf_counter() - start,
                "history": {k: [np.asarray(row).tolist() for row in v] for k, v in history.items()}}
        checkpointer.save(step_offset + logs_done * fp_per_log, state, meta)

    stop = _StopOnCtrlC()
    try:
        while done_logs < num_logs:
            if stop.requested:
                raise KeyboardInterrupt
            size = min(sizes[0], num_logs - done_logs)
            new_state, logged = chunk(state, size)
            logged = distributed.host_tree(logged)  # multi-host: all-gathered runs
            state = new_state
            for k, v in logged.items():
                history[k].extend(np.asarray(v))
            done_logs += size
            if bar is not None:
                bar(done_logs * fp_per_log, forward_passes, {k: np.asarray(v[-1]) for k, v in logged.items()})
            every, seconds = checkpointing.every, checkpointing.seconds
            due = done_logs == num_logs or (
                every is not None and (done_logs - last_save_logs) * fp_per_log >= every) or (
                seconds is not None and time.perf_counter() - last_save_time >= seconds) or (
                every is None and seconds is None)
            if checkpointer is not None and due:
                save(done_logs)
                last_save_logs, last_save_time = done_logs, time.perf_counter()
    except KeyboardInterrupt:
        where = "nothing was saved (no output directory)"
        if checkpointer is not None:
            if done_logs > last_save_logs or not checkpointer.steps():
                save(done_logs)
            where = (f"saved a checkpoint at {step_offset + done_logs * fp_per_log} forward passes per run in "
                     f"{checkpointer.path}; continue with --resume")
        raise Interrupted(f"interrupted by the user; {where}.") from None
    finally:
        stop.restore()
        if checkpointer is not None:
            checkpointer.close()
    jax.block_until_ready(state)
    return state, elapsed_before + time.perf_counter() - start
