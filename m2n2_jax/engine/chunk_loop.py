"""The one run loop every method uses: compiled chunks, progress, checkpoints and Ctrl-C.

A method (the M2N2 engine, an evosax strategy, MAP-Elites, a recipe-archive
merge) advances a batched state of R runs with ``chunk(state, num_logs,
steps_per_log) -> (state, logged)``, where ``logged`` holds ``{name: [num_logs,
R]}``. :func:`drive` runs such chunks for a budget planned by
:mod:`m2n2_jax.engine.budget`: it restores from a checkpoint when resuming, appends
what the chunks log, advances a progress bar, saves checkpoints every so many
forward passes per run and every so many seconds, and turns Ctrl-C into a
saved checkpoint and :class:`Interrupted`. Chunking never changes results, so
a resumed run ends where an uninterrupted one does. How to run (progress,
checkpoints, devices) travels apart from what is computed, in
:class:`RunOptions`; every method returns a :class:`RunResult`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from m2n2_jax.engine import distributed
from m2n2_jax.engine.budget import Plan
from m2n2_jax.engine.checkpoint import RunCheckpointer
from m2n2_jax.engine.identity import check as check_identity
from m2n2_jax.errors import ConfigError, M2N2Error


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


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run, apart from what is computed (none of these change a run's arithmetic,
    except ``eval_batch_size`` and ``devices``, which can change float rounding).

    progress: True for a tqdm bar, or a callable(done_fp, total_fp, last_metrics).
    checkpointing: where and how often to save, and whether to resume.
    identity_extra: added to what a checkpoint must agree on to be resumed (e.g. CLI settings).
    devices: devices to spread the runs or children over (engine only; default jax.devices(): all processes' devices).
    eval_batch_size: children per ``jax.lax.map`` batch when scoring (default: the method's).
    chunk_forward_passes: forward passes per run between returns to Python (progress, saves).
    """

    progress: bool | Callable = False
    checkpointing: Checkpointing = Checkpointing()
    identity_extra: dict | None = None
    devices: Sequence | None = None
    eval_batch_size: int | None = None
    chunk_forward_passes: int = 2000

    @classmethod
    def saving(cls, directory: str | None, *, every: int | None = None, seconds: float | None = None,
               resume: bool = False, identity_extra: dict | None = None, **rest) -> "RunOptions":
        """Options that checkpoint into ``directory`` (None: no checkpoints): the one way they are assembled."""
        return cls(checkpointing=Checkpointing(directory, every, seconds or None, resume),
                   identity_extra=identity_extra, **rest)

    def replace(self, **changes) -> "RunOptions":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class RunResult:
    """What every method returns: curves of R runs (``metrics[name]`` is [R, L] at
    ``forward_passes`` [L]) and each run's reported model."""

    method: str
    seeds: list[int]
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float
    config: dict
    best: np.ndarray                  # [R, D] each run's reported model
    extra: dict = dataclasses.field(default_factory=dict)  # "execution" and method-specific facts
    task: str | None = None
    state: Any = None                 # the final state (the engine's RunsState), for inspection

    @property
    def execution(self) -> dict:
        """How it ran (eval batch size, devices, sharding): float results can depend on these."""
        return self.extra.get("execution", {})


@dataclasses.dataclass(frozen=True)
class Saved:
    """How a method's state goes into a checkpoint: arrays (orbax) plus JSON, and back.

    The default saves the state itself (a pytree of arrays). A state that is not
    only arrays (recipe archives) splits itself with ``arrays`` and ``meta`` and
    is rebuilt from both by ``rebuild(arrays, meta, like)``.
    """

    arrays: Callable[[Any], Any] = lambda state: state
    meta: Callable[[Any], dict] = lambda state: {}
    rebuild: Callable[[Any, dict, Any], Any] = lambda arrays, meta, like: jax.tree.map(jax.numpy.asarray, arrays)


def latest_meta(directory: str, identity: dict) -> dict:
    """The JSON item of the newest readable checkpoint, refusing one made with other settings."""
    with RunCheckpointer(directory) as checkpointer:
        meta = checkpointer.latest_meta()
    check_identity(meta["identity"], identity)
    return meta


def restore(directory: str, like, identity: dict, saved: Saved = Saved()):
    """(state, history, done_logs, elapsed seconds) from the newest good checkpoint in ``directory``.

    ``like`` is a state of the right structure. Refuses, naming the fields, a
    checkpoint made with other settings.
    """
    with RunCheckpointer(directory) as checkpointer:
        check_identity(checkpointer.latest_meta()["identity"], identity)  # other settings: say which, first
        arrays, meta = checkpointer.restore_latest(saved.arrays(like))
    check_identity(meta["identity"], identity)
    history = {k: [np.asarray(row, dtype=np.float32) for row in v] for k, v in meta["history"].items()}
    return saved.rebuild(arrays, meta, like), history, int(meta["done_logs"]), float(meta["elapsed_seconds"])


def progress_bar(progress, total: int, runs: int, initial: int = 0, headline: str = "test_accuracy"):
    """A tqdm bar over all runs' forward passes (so its rate is the throughput), or the given callable.

    Multi-host: process 0 only.
    """
    if not distributed.is_main():
        return None
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total * runs, initial=initial * runs, unit="fp", unit_scale=True,
               desc=f"{runs} run(s) x {total:,} forward passes", dynamic_ncols=True)

    def update(done, _total, last):
        bar.update(done * runs - bar.n)
        if headline in last:
            bar.set_postfix({headline.replace("test_", "test "): f"{np.mean(last[headline]):.3f}"})
        if done >= total:
            bar.close()

    return update


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


def scan_logs(step: Callable, log: Callable) -> Callable:
    """``run(state, num_logs, steps_per_log) -> (state, logged [num_logs, ...])``: ``steps_per_log``
    steps then a log, ``num_logs`` times, inside ``lax.scan`` (the body of every compiled chunk)."""

    def run(state, num_logs: int, steps_per_log: int):
        def interval(s, _):
            s = jax.lax.fori_loop(0, steps_per_log, lambda _, x: step(x), s)
            return s, log(s)

        return jax.lax.scan(interval, state, None, length=num_logs)

    return run


def compile_chunk(step: Callable, log: Callable, donate: bool = True) -> Callable:
    """jit(state, num_logs, steps_per_log) of :func:`scan_logs` (both counts static).

    donate: reuse the input state's memory (no second copy of a large state);
    off when checkpointing, which may still need the state a chunk was given.
    """
    return jax.jit(scan_logs(step, log), static_argnums=(1, 2), donate_argnums=0 if donate else ())


def run_chunks(chunk: Callable, state, history: dict, plan: Plan, *, chunks: list[tuple[int, int]], bar=None,
               checkpointing: Checkpointing = Checkpointing(), identity: dict | None = None, done_logs: int = 0,
               elapsed_before: float = 0.0, start: float | None = None, step_offset: int = 0,
               saved: Saved = Saved()):
    """Advance ``state`` through ``chunks`` [(log intervals, steps each)], ending at ``plan.num_logs``.

    history: {name: [per-log arrays]}, extended in place with what the chunks log.
    step_offset: added to every checkpoint's step (runs done one after another share
    one directory this way). Returns (state, wall seconds including those before a resume).
    """
    start = time.perf_counter() if start is None else start
    checkpointer = (RunCheckpointer(checkpointing.directory, max_to_keep=checkpointing.keep)
                    if checkpointing.directory else None)
    last_save_logs, last_save_time = done_logs, time.perf_counter()

    def save(logs_done):
        meta = {**saved.meta(state), "identity": identity, "done_logs": logs_done,
                "elapsed_seconds": elapsed_before + time.perf_counter() - start,
                "history": {k: [np.asarray(row).tolist() for row in v] for k, v in history.items()}}
        checkpointer.save(step_offset + plan.fp_at(logs_done), saved.arrays(state), meta)

    stop = _StopOnCtrlC()
    try:
        for size, steps_per_log in chunks:
            if stop.requested:
                raise KeyboardInterrupt
            new_state, logged = chunk(state, size, steps_per_log)
            logged = distributed.host_tree(logged)  # multi-host: all-gathered runs
            state = new_state
            for k, v in logged.items():
                history[k].extend(np.asarray(v))
            done_logs += size
            if bar is not None:
                bar(plan.fp_at(done_logs), plan.forward_passes, {k: np.asarray(v[-1]) for k, v in logged.items()})
            every, seconds = checkpointing.every, checkpointing.seconds
            due = done_logs == plan.num_logs or (
                every is not None and plan.fp_at(done_logs) - plan.fp_at(last_save_logs) >= every) or (
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
            where = (f"saved a checkpoint at {step_offset + plan.fp_at(done_logs)} forward passes per run in "
                     f"{checkpointer.path}; continue with --resume")
        raise Interrupted(f"interrupted by the user; {where}.") from None
    finally:
        stop.restore()
        if checkpointer is not None:
            checkpointer.close()
    jax.block_until_ready(state)
    return state, elapsed_before + time.perf_counter() - start


@dataclasses.dataclass
class Driven:
    """What :func:`drive` returns: the final state, log points [L], curves {name: [R, L]}, wall seconds."""

    state: Any
    forward_passes: list[int]
    metrics: dict[str, np.ndarray]
    wall_seconds: float


def drive(state, chunk: Callable, log: Callable, plan: Plan, options: RunOptions, *, identity: dict, runs: int,
          start: float | None = None, saved: Saved = Saved(), step_offset: int = 0,
          headline: str = "test_accuracy") -> Driven:
    """Advance R = ``runs`` runs from ``state`` through the budget of ``plan``: the one run loop.

    chunk(state, num_logs, steps_per_log) -> (state, {name: [num_logs, R]}); log(state) ->
    {name: [R]} gives the first log point. With ``options.checkpointing.directory`` the state
    and curves are saved (``saved`` says how) under the run's ``identity``; resuming
    continues from the newest good checkpoint, refusing one whose identity differs.
    """
    start = time.perf_counter() if start is None else start
    checkpointing = options.checkpointing.checked()
    chunk_fp = options.chunk_forward_passes
    if checkpointing.every is not None:
        chunk_fp = min(chunk_fp, checkpointing.every)
    history = {k: [np.asarray(v)] for k, v in distributed.host_tree(log(state)).items()}
    done_logs, elapsed_before = 0, 0.0
    if checkpointing.resume:
        state, history, done_logs, elapsed_before = restore(checkpointing.directory, state, identity, saved)
    bar = progress_bar(options.progress, plan.forward_passes, runs, plan.fp_at(done_logs), headline)
    state, wall = run_chunks(chunk, state, history, plan, chunks=plan.chunks(done_logs, chunk_fp), bar=bar,
                             checkpointing=checkpointing, identity=identity, done_logs=done_logs,
                             elapsed_before=elapsed_before, start=start, step_offset=step_offset, saved=saved)
    state = distributed.local_tree(state)  # multi-host: every process gets all runs
    return Driven(state, plan.log_points, {k: np.stack(v, axis=1) for k, v in history.items()}, wall)


def drive_steps(state, step: Callable, log: Callable, plan: Plan, options: RunOptions, *, identity: dict,
                runs: int, start: float | None = None, step_offset: int = 0, saved: Saved = Saved()) -> Driven:
    """:func:`drive` for a method given as pure functions over its batched state of R runs:
    ``step(state) -> state`` (``plan.fp_per_step`` forward passes per run) and
    ``log(state) -> {name: [R]}`` (metrics of each run's reported model)."""
    chunk = compile_chunk(step, log, donate=options.checkpointing.directory is None)
    return drive(state, chunk, jax.jit(log), plan, options, identity=identity, runs=runs, start=start,
                 step_offset=step_offset, saved=saved)
