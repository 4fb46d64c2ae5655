"""Peak memory of a run, known before it starts, against the memory the process may use.

A run that does not fit is otherwise ended by the kernel (exit -9, no word)
minutes into its work. :func:`estimate` gives the peak resident memory of
``m2n2 merge`` / ``m2n2 evolve`` from the model size D, the archive (dense:
P models per run; recipes: the K inputs and working copies), the runs, the
children per step and the devices; :func:`available` is what this process may
still use: the least of MemAvailable, the cgroup's limit less its usage and
RLIMIT_AS less the address space already mapped. :func:`plan_merge` keeps the
dense archive when it fits, else switches to the recipe archive (one line
announcing it), else refuses in one line; :func:`check_evolve` refuses in one
line. The estimate's accuracy against measured peak RSS is in docs/memory.md.

The model terms count float32 copies of the flat model (4 D bytes each):

- dense: the inputs on the host and on the device (2 K); the archives,
  twice while a chunk runs without donating its input (checkpointing) and
  once more on the host when a checkpoint is written (R P (2 + 1)); the
  children and the crossover's temporaries (4 R B); the reported models (2 R);
- recipes: the inputs on the host (K) and on each scoring device (K per
  device); per device one child being materialised and its scoring copy (2);
  the host's working copy (1); the reported models (2 R);
- both: the task's own copy of the model's parameters (1) and the runtime
  (Python, JAX, XLA's compiled programs): :data:`RUNTIME_BYTES`;
- the task's own scoring memory (``Task.scoring_bytes``: activations, caches,
  logits, the tokenised data, a further copy of the weights), once per
  scoring device.
"""
from __future__ import annotations

import dataclasses
import resource

from m2n2_jax.errors import ConfigError

GIB = 1 << 30
RUNTIME_BYTES = 700 << 20  # Python + JAX + compiled programs, measured with a tiny model (docs/memory.md)
HEADROOM = 0.9             # use at most this share of what is available


@dataclasses.dataclass(frozen=True)
class Need:
    """A run's estimated peak memory, in bytes, and how it was counted."""

    bytes: int
    model_copies: float
    archive: str
    task_bytes: int = 0

    @property
    def gib(self) -> float:
        return self.bytes / GIB


def model_copies(archive: str, num_inputs: int, runs: int = 1, archive_size: int = 20, batch: int = 1,
                 devices: int = 1) -> float:
    """Float32 copies of the flat model that a run holds at its peak (see the module docstring)."""
    if archive == "recipes":
        return num_inputs * (1 + devices) + 2 * devices + 1 + 2 * runs + 1
    return 2 * num_inputs + 3 * runs * archive_size + 4 * runs * batch + 2 * runs + 1


def estimate(num_params: int, archive: str = "dense", num_inputs: int = 2, runs: int = 1, archive_size: int = 20,
             batch: int = 1, devices: int = 1, runtime_bytes: int = RUNTIME_BYTES, scoring_bytes: int = 0) -> Need:
    """Estimated peak resident memory of a run over a model of ``num_params`` float32 parameters whose task
    holds ``scoring_bytes`` per scoring call (``Task.scoring_bytes``), one call per device at a time."""
    copies = model_copies(archive, num_inputs, runs, archive_size, batch, devices)
    task = int(scoring_bytes) * max(1, devices)
    return Need(int(runtime_bytes + copies * 4 * num_params + task), copies, archive, task)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """The cgroup's limit less its usage (v2, else v1), or None without a limit."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read(limit_path), _read(usage_path)
        if limit is None or not limit.isdigit() or int(limit) >= 1 << 60:
            continue
        return int(limit) - (int(usage) if usage and usage.isdigit() else 0)
    return None


def _address_space_room() -> int | None:
    """RLIMIT_AS less the address space this process has mapped, or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmSize:"):
            return soft - int(line.split()[1]) * 1024
    return soft


def _resident() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def available() -> tuple[int | None, str]:
    """(bytes this process may still use, which limit binds), None where nothing is known.

    The process's own resident memory counts as usable for the run (the
    estimate includes the runtime), except under RLIMIT_AS, which counts
    address space rather than resident memory.
    """
    here = _resident()
    rooms = {"MemAvailable": _meminfo_available(), "the cgroup's memory limit": _cgroup_room()}
    rooms = {k: v + here for k, v in rooms.items() if v is not None}
    address = _address_space_room()
    if address is not None:
        rooms["RLIMIT_AS (ulimit -v)"] = address + RUNTIME_BYTES
    if not rooms:
        return None, "unknown"
    which = min(rooms, key=rooms.get)
    return max(rooms[which], 0), which


def fits(need: Need, room: int | None) -> bool:
    return room is None or need.bytes <= HEADROOM * room


def plan_merge(num_params: int, archive: str, archive_given: bool, num_inputs: int, runs: int, archive_size: int,
               batch: int, devices: int = 1, recipes_possible: bool = True, room=None, say=print,
               scoring_bytes: int = 0) -> str:
    """The archive a merge runs on: ``archive`` when it fits; the recipe archive instead (announced with
    ``say``) when the dense one would not fit, was not asked for explicitly and the method can run on
    recipes (``recipes_possible``); else a one-line refusal. ``room``: (bytes, which limit), default
    :func:`available`; ``scoring_bytes``: the task's own memory per scoring call."""
    room, which = available() if room is None else room
    shape = dict(num_inputs=num_inputs, runs=runs, archive_size=archive_size, batch=batch, devices=devices,
                 scoring_bytes=scoring_bytes)
    need = estimate(num_params, archive, **shape)
    if fits(need, room):
        return archive
    recipes = estimate(num_params, "recipes", **shape)
    what = f"{num_params:,} parameters, {runs} run(s) x {archive_size} members"
    recipes_fit = recipes_possible and archive == "dense" and fits(recipes, room)
    if recipes_fit and not archive_given:
        say(f"m2n2 merge: the dense archive would need about {need.gib:.1f} GiB ({what}) but {room / GIB:.1f} GiB "
            f"are available ({which}); using --archive recipes (about {recipes.gib:.1f} GiB).")
        return "recipes"
    one_device = dict(shape, devices=1)
    single = recipes_possible and devices > 1 and fits(estimate(num_params, "recipes", **one_device), room)
    option = ("--archive recipes" if recipes_fit else
              "--archive recipes --cpu-devices 1 (one scoring device)" if single and archive == "dense" else
              "--cpu-devices 1 (one scoring device)" if single else "fewer --runs or a machine with more memory")
    other = f"; {recipes.gib:.1f} GiB with --archive recipes" if archive == "dense" else ""
    raise ConfigError(f"this merge needs about {need.gib:.1f} GiB with the {archive} archive ({what}{other}) but "
                      f"{room / GIB:.1f} GiB are available ({which}); use {option}.")


def check_evolve(num_params: int, num_inputs: int, runs: int, archive_size: int, batch: int, devices: int = 1,
                 room=None, scoring_bytes: int = 0) -> None:
    """Refuse in one line a dense-archive run that would not fit in the memory available."""
    room, which = available() if room is None else room
    need = estimate(num_params, "dense", num_inputs, runs, archive_size, batch, devices, scoring_bytes=scoring_bytes)
    if fits(need, room):
        return
    fixed = RUNTIME_BYTES + need.task_bytes
    per_run = (need.bytes - fixed) / runs
    fitting_runs = int((HEADROOM * room - fixed) // per_run) if per_run else runs
    option = (f"--runs {fitting_runs}" if fitting_runs >= 1 else
              "a smaller --archive-size, or m2n2 merge --archive recipes to merge given models")
    raise ConfigError(f"this run needs about {need.gib:.1f} GiB ({num_params:,} parameters, {runs} run(s) x "
                      f"{archive_size} members, batch {batch}) but {room / GIB:.1f} GiB are available ({which}); "
                      f"use {option}.")

