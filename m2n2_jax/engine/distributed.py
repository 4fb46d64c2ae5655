"""Multi-host runs on JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program on its own devices; a mesh over
``jax.devices()`` (all processes' devices) spreads runs or children over them
(:func:`m2n2_jax.engine.devices.device_mesh`). This module holds what that needs
beyond one process, so the run loops only call small hooks:

- :func:`initialize`: start the runtime from the CLI's options (or let JAX
  detect a TPU pod, SLURM or Open MPI), with gloo collectives on CPUs.
- :func:`host_tree`: numpy copies of arrays that may span processes (metrics,
  final archives, checkpoints), gathered with ``multihost_utils``.
- :func:`check_agreement`: a digest of settings, seeds, data and software
  compared across processes at start, so processes that were started
  differently stop with one line instead of computing different things.
- :func:`is_main`, :func:`main_first`: results, files and progress come from
  process 0 only.

With one process every function is a no-op or a plain ``device_get``.
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from m2n2_jax.errors import ConfigError, M2N2Error
from m2n2_jax.version import __version__

MESSAGE_BYTES = 400  # room for one process's error message in the start-up exchange
MAX_PARTS = 8        # digests per exchange (fixed, so every exchange has one shape)
# initialize() called / a start-up failure shared already / past the start checks
_started = {"initialized": False, "told": False, "running": False}


class DistributedError(M2N2Error):
    """Processes of one multi-host run disagree, or one of them failed at start."""


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_seconds: int = 300) -> None:
    """Start JAX's multi-controller runtime before anything else touches JAX.

    Without arguments JAX detects the cluster (Cloud TPU, SLURM, Open MPI);
    a plain cluster passes all three of coordinator ("host:port" of process 0),
    num_processes and process_id. On CPUs the cross-process collectives use gloo.
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(k for k, v in given.items() if v is None)
        raise ConfigError(f"a multi-host run started by hand needs --coordinator, --num-processes and "
                          f"--process-id together (missing {missing}); or pass none of them to let JAX detect "
                          "the cluster (TPU pod, SLURM, Open MPI).")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id} must be in 0..{num_processes - 1} (--num-processes "
                          f"{num_processes}).")
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # a coordinator on the loopback address listens there only (JAX's default binds all interfaces)
    loopback = coordinator is not None and coordinator.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_seconds,
                                   coordinator_bind_address=coordinator if loopback else None)
        _started["initialized"] = True
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"could not start the multi-host runtime ({first[:300]}); pass --coordinator "
                          "HOST:PORT, --num-processes N and --process-id I to every process, or run inside a "
                          "TPU pod, SLURM or Open MPI job.") from None


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True in process 0 (or the only process): the one that writes results and shows progress."""
    return jax.process_index() == 0


def spans_processes(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def host_tree(tree):
    """The pytree with every array as a numpy copy of its global value, on every process.

    Arrays of this process or replicated everywhere are copied locally;
    arrays sharded over several processes (the "runs" mesh) are all-gathered
    with ``multihost_utils.process_allgather``, in one exchange.
    """
    leaves, treedef = jax.tree.flatten(tree)
    far = [i for i, x in enumerate(leaves) if spans_processes(x) and not x.is_fully_replicated]
    out = [np.asarray(x.addressable_data(0)) if spans_processes(x) else np.asarray(jax.device_get(x))
           for x in leaves]
    if far:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather([leaves[i] for i in far], tiled=True)
        for i, value in zip(far, gathered):
            out[i] = np.asarray(value)
    return jax.tree.unflatten(treedef, out)


def local_tree(tree):
    """Arrays spanning processes gathered onto this process's default device (else unchanged)."""
    if not any(spans_processes(x) for x in jax.tree.leaves(tree)):
        return tree
    return jax.tree.map(jax.numpy.asarray, host_tree(tree))


def digest(value) -> str:
    """SHA-256 of a JSON-able value or of arrays (their dtype, shape and bytes)."""
    h = hashlib.sha256()

    def feed(v):
        if isinstance(v, (np.ndarray, jax.Array, np.generic)):
            a = np.ascontiguousarray(np.asarray(v))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(v, dict):
            for k in sorted(v):
                h.update(json.dumps(str(k)).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for item in v:
                feed(item)
            h.update(b"]")
        else:
            h.update(json.dumps(v, sort_keys=True, default=repr).encode())

    feed(value)
    return h.hexdigest()


def run_digests(identity: dict, task, seed_models=None):
    """What the processes of a run must agree on, as a callable (computed only with several processes).

    settings: the run's identity without its seeds (callers keep the seeds out of their own
    settings: the CLI records --seed only as the seeds); seeds; data: the scores
    and metrics of one fixed probe model (the first seed model, else a random
    seed from PRNGKey(0)) with the task's capacities and labels, i.e. the data
    as the score function sees them; models: the seed models; software: versions.
    """

    def parts():
        probe = (jax.numpy.asarray(seed_models[0]) if seed_models is not None
                 else task.random_seed(jax.random.PRNGKey(0)))
        data = [task.num_datapoints, jax.jit(task.score_vector)(probe), jax.jit(task.metrics)(probe),
                task.capacity, task.train_labels]
        settings = {k: v for k, v in identity.items() if k != "seeds"}
        return {"settings": settings, "seeds": identity.get("seeds"),
                "data": [np.asarray(x) if x is not None else None for x in jax.tree.leaves(data)],
                "models": None if seed_models is None else np.asarray(seed_models),
                "software": {"m2n2_jax": __version__, "jax": jax.__version__}}

    return parts


def check_agreement(parts, error: BaseException | None = None) -> None:
    """Stop every process with one line if the processes' ``parts`` differ or one of them failed.

    parts: {name: value} (settings, seeds, data, ...), or a callable returning
    it (called only with several processes); each is digested and the
    digests of all processes are exchanged (one small all-gather), so
    every process reaches the same verdict. ``error``: this process's own
    start-up failure, reported to the others instead of leaving them waiting.
    With one process: re-raises ``error``, nothing else.
    """
    if process_count() == 1:
        if error is not None:
            raise error
        return
    from jax.experimental import multihost_utils

    if callable(parts):
        try:
            parts = parts()
        except M2N2Error as err:  # e.g. data missing on this host: tell the others
            parts, error = {}, error or err
    names = sorted(parts)
    if len(names) >= MAX_PARTS:
        raise ValueError(f"at most {MAX_PARTS - 1} parts per exchange")
    digests = np.zeros((MAX_PARTS, 32), np.uint8)
    for i, name in enumerate(names):
        digests[i] = np.frombuffer(bytes.fromhex(digest(parts[name])), np.uint8)
    digests[-1] = np.frombuffer(bytes.fromhex(digest(names)), np.uint8)  # which exchange this is
    message = np.zeros(MESSAGE_BYTES, np.uint8)
    if error is not None:
        text = str(error).encode()[:MESSAGE_BYTES]
        message[:len(text)] = np.frombuffer(text, np.uint8)
    mine = {"failed": np.asarray([error is not None], np.int32), "digests": digests, "message": message}
    every = multihost_utils.process_allgather(mine)  # leading axis: process index
    me = jax.process_index()
    failed = [p for p in range(process_count()) if every["failed"][p, 0]]
    _started["told"] = bool(failed)
    if error is not None:
        raise error
    if failed:
        p = failed[0]
        text = bytes(every["message"][p]).rstrip(b"\0").decode(errors="replace")
        raise DistributedError(f"process {p} failed at start ({text}); this process (process {me}) stops too.")
    differ = {}
    for p in range(process_count()):
        if not np.array_equal(every["digests"][p, -1], every["digests"][0, -1]):
            differ.setdefault("the point they reached (different commands or versions)", []).append(p)
            continue
        for i, name in enumerate(names):
            if not np.array_equal(every["digests"][p, i], every["digests"][0, i]):
                differ.setdefault(name, []).append(p)
    if differ:
        what = "; ".join(f"{name} (process {', '.join(map(str, ps))} vs process 0)" for name, ps in differ.items())
        raise DistributedError(f"the processes of this multi-host run disagree on {what}: start every process "
                               "with the same options, seeds and data files (and the same m2n2-jax and JAX).")


def check_mesh_spans_processes(devices, usable: int, count: int) -> list:
    """The ``usable`` devices of a multi-host mesh, spread over all processes.

    Every process runs the same program, so each must own part of a mesh that
    spans processes; devices are taken round-robin over the processes. Refuses
    a mesh that would leave a process out. A mesh of this process's own
    devices (``jax.local_devices()``) stays local.
    """
    if all(d.process_index == jax.process_index() for d in devices):  # this process's own devices only
        return list(devices[:usable])
    by_process = {}
    for d in devices:
        by_process.setdefault(d.process_index, []).append(d)
    order = [group[i] for i in range(max(map(len, by_process.values())))
             for group in by_process.values() if i < len(group)]
    chosen = order[:usable]
    if len({d.process_index for d in chosen}) < process_count():
        raise ConfigError(f"{count} runs (x children per step) split over {usable} device(s) would leave some of "
                          f"the {process_count()} processes without work; choose runs (or runs x batch) divisible "
                          f"by the number of processes ({process_count()}).")
    return chosen


def started() -> None:
    """Mark the start-up checks as passed: later failures are no longer shared by :func:`report_start_failure`."""
    _started["running"] = True


def report_start_failure(error: M2N2Error) -> None:
    """Tell the other processes that this one failed before the run started (so they stop too).

    Pairs with the exchange the others are waiting in (:func:`check_agreement`
    or :func:`main_first`); nothing to do with one process, after the start,
    or when the failure was already shared.
    """
    if not _started["initialized"] or process_count() == 1 or _started["told"] or _started["running"] or isinstance(error, DistributedError):
        return
    try:
        check_agreement({}, error)
    except M2N2Error:
        pass


def map_over_processes(fn, items, out_like) -> np.ndarray:
    """``np.stack([fn(x) for x in items])``, each process computing every n-th item, all-gathered.

    For host-side loops (the recipe archive's children): process p evaluates
    items p, p + n, ...; one ``process_allgather`` then gives every process
    all results. out_like: shape and dtype of one result (a process may have
    no item). With one process, a plain loop.
    """
    if process_count() == 1:
        return np.stack([np.asarray(fn(x)) for x in items])
    from jax.experimental import multihost_utils

    n, me = process_count(), jax.process_index()
    per = -(-len(items) // n)
    mine = np.zeros((per, *out_like.shape), out_like.dtype)
    for j, i in enumerate(range(me, len(items), n)):
        mine[j] = np.asarray(fn(items[i]))
    every = np.asarray(multihost_utils.process_allgather(mine))  # [n, per, ...]
    return np.stack([every[i % n, i // n] for i in range(len(items))])


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_first(fn, *args, **kwargs):
    """Run ``fn`` on process 0 only (e.g. preparing the output directory), then let the others on.

    If it fails on process 0, every process raises (the others with a line
    naming process 0), so none is left waiting.
    """
    if process_count() == 1:
        return fn(*args, **kwargs)
    error = None
    if is_main():
        try:
            fn(*args, **kwargs)
        except M2N2Error as err:
            error = err
    check_agreement({}, error)
    return None
