"""Where children are scored: one device or several.

``evaluate`` scores a batch of flat models with ``jax.lax.map`` (on CPUs one
child at a time beat one big vmap); ``device_mesh`` chooses how runs or
children are spread over devices, and ``sharded_evaluate`` scores each
device's share of the children. The compiled step (runner.py) uses them.
``expose_cpu_devices`` splits a CPU into several devices before JAX starts.
"""
from __future__ import annotations

import os

import jax

from m2n2_jax.engine.distributed import check_mesh_spans_processes
from m2n2_jax.errors import ConfigError


MAX_AUTO_CPU_DEVICES = 8


def expose_cpu_devices(count: int | None) -> int:
    """Split the host CPU into ``count`` XLA devices (default one per core, at most 8).

    Independent runs then advance in parallel, one group per device, which
    also parallelises the small per-run operations that a single device runs
    one after another. JAX reads the count (its ``jax_num_cpu_devices``
    option) once, when it starts its backends, so this must run before any JAX
    computation; the environment is left untouched, so processes started later
    (``m2n2 compare`` runs each method in one) and the user's own code see it
    unchanged. Does nothing when XLA_FLAGS already sets a device count or
    JAX's backends are already up. Returns the count asked for.
    """
    count = count or min(os.cpu_count() or 1, MAX_AUTO_CPU_DEVICES)
    if count <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return count
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends are up already (JAX has computed something): keep their devices
        pass
    return count


def evaluate(score_vector, vectors, batch_size: int) -> jax.Array:
    """Scores [M, N] of flat models [M, D] with jax.lax.map in batches."""
    batch_size = max(1, min(batch_size, vectors.shape[0]))
    return jax.lax.map(score_vector, vectors, batch_size=batch_size)


def device_mesh(devices, num_runs: int, children_per_step: int = 1):
    """A 1-D mesh for the runs, or None for one device.

    Two ways to use several devices, chosen by how many devices each can keep busy:
    - axis "runs": each device owns whole runs (R / n of them) and does their
      asks, evaluations and tells itself; nothing crosses devices. Preferred
      whenever it uses as many devices as the other way, because the small
      per-run operations then run in parallel too (figures: docs/multi-device.md).
    - axis "children": every device holds all archives, scores 1/n of each
      step's children and all-gathers the scores (for few runs with B > 1).

    Devices that cannot be used evenly stay idle; a warning says so when the
    devices were given explicitly.
    """
    import warnings

    import numpy as np

    explicit = devices is not None  # only then is an idle device worth a warning
    devices = list(jax.devices() if devices is None else devices)  # one process: its local devices
    if not devices:
        raise ConfigError("no devices to run on; pass --devices 1 or more.")

    def largest_divisor(count):
        return max(n for n in range(1, len(devices) + 1) if count % n == 0)

    by_runs, by_children = largest_divisor(num_runs), largest_divisor(num_runs * children_per_step)
    usable = by_children
    if usable < len(devices) and explicit:
        warnings.warn(f"{num_runs} runs x {children_per_step} children per step cannot be split evenly over "
                      f"{len(devices)} devices; using {usable}. Choose runs (or runs x batch) divisible by the "
                      "device count to use them all.", stacklevel=2)
    if usable == 1:
        return None
    axis = "runs" if by_runs == by_children else "children"
    chosen = devices[:usable]
    if jax.process_count() > 1:  # multi-host: every process runs the program, so each needs a device in it
        chosen = check_mesh_spans_processes(devices, usable, num_runs if axis == "runs" else num_runs * children_per_step)
    return jax.sharding.Mesh(np.array(chosen), (axis,))


def sharded_evaluate(score_vector, mesh, batch_size: int):
    """Scores of replicated children [M, D], each device scoring its M / n and all-gathering.

    Per step only the score matrix [M, N] crosses devices (and hosts): the
    archives, asks and tells are replicated and identical everywhere.
    """
    from jax.sharding import PartitionSpec as P

    if mesh is None:
        return lambda vectors: evaluate(score_vector, vectors, batch_size)

    def local(vectors):
        return jax.lax.all_gather(evaluate(score_vector, vectors, batch_size), "children", tiled=True)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=P("children"), out_specs=P(), check_vma=False)
    replicated = jax.sharding.NamedSharding(mesh, P())

    # Pin the children as replicated: otherwise XLA's sharding propagation builds each device's
    # share only and all-gathers the children [M, D] for the tell, far more traffic than the scores
    # (measured in docs/multi-device.md, "Tests"; tests/engine/test_multihost.py bounds it).
    return lambda vectors: sharded(jax.lax.with_sharding_constraint(vectors, replicated))


def replicate(tree, mesh):
    """Place a pytree on every device of the mesh (no-op without a mesh)."""
    if mesh is None:
        return tree
    from jax.sharding import NamedSharding, PartitionSpec as P

    return jax.device_put(tree, NamedSharding(mesh, P()))


def default_eval_batch_size(num_children: int, platform: str | None = None) -> int:
    """Children scored per lax.map iteration.

    On CPUs one at a time: with XLA's CPU dot kernels that measured fastest
    inside the engine step (docs/results/bench). On GPUs and TPUs all of a
    step's children at once, which fills the accelerator.
    """
    platform = platform or jax.default_backend()
    return 1 if platform == "cpu" else max(1, num_children)
