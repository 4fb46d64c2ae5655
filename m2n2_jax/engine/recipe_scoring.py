"""Scoring recipe children on several devices: children sharded, seeds replicated.

A recipe archive's children are a few numbers each (segment bounds and K
coefficients per segment, :mod:`m2n2_jax.algorithm.recipes`), so a step's
children travel to the devices as small arrays and each device materialises
and scores its own share against its replicated copy of the K seed models:
a one-axis :class:`jax.sharding.Mesh` ("children") over the devices, the
encoded children sharded along it, the seeds replicated, and
``jax.shard_map`` running ``jax.lax.map(score . materialise)`` on every
device (as :func:`m2n2_jax.engine.devices.sharded_evaluate` does for dense
children). Only the children's encodings go in and their scores come out.

A step's B children are padded to a multiple of the device count by repeating
the last child (those scores are dropped), and recipes to a power-of-two
number of segments, so that a run compiles a few shapes only. Every child is
materialised by the same per-device program whatever the device count, with
float32 coefficients: the host's decisions (parents, split points, SLERP
coefficients) do not depend on the devices at all.

``dtype="bfloat16"`` keeps the replicated seeds in bfloat16 (half the memory)
and hands the score function bfloat16 children (the coefficients are applied
in float32 and the sum rounded once); what the score function computes in is
its own business.
"""
from __future__ import annotations

import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def encode(children, num_devices: int, num_seeds: int, size: int):
    """(bounds [M, S + 1] int32, coeffs [M, S, K] float32, B): the children padded to M = a multiple of
    ``num_devices`` and S = a power of two >= every child's segment count (padding bounds are ``size``)."""
    count = len(children)
    if count == 0:
        raise ConfigError("no children to score.")
    padded = -(-count // num_devices) * num_devices
    segments = max(r.num_segments for r in children)
    s = 1 << max(2, (segments - 1).bit_length())
    bounds = np.full((padded, s + 1), size, np.int64)
    coeffs = np.zeros((padded, s, num_seeds), np.float32)
    for i in range(padded):
        r = children[min(i, count - 1)]
        bounds[i, :r.num_segments + 1] = r.bounds
        coeffs[i, :r.num_segments] = r.coeffs
    if size >= 2 ** 31:
        raise ConfigError(f"models of {size:,} parameters need 64-bit indices; split the vector.")
    return bounds.astype(np.int32), coeffs, count


def materialise(seeds, bounds, coeffs, dtype=None):
    """The dense child [D] of one encoded recipe: sum_k coeffs[segment(d), k] * seeds[k, d].

    The segment of each coordinate is a running count of the segment starts
    (a small-integer array: 1 byte per parameter for up to 127 segments).
    """
    size, num_segments = seeds.shape[1], coeffs.shape[0]
    index_dtype = jnp.int8 if num_segments < 127 else jnp.int16 if num_segments < 32767 else jnp.int32
    starts = jnp.zeros(size, index_dtype).at[bounds[1:-1]].add(1, mode="drop")
    segment = jnp.cumsum(starts, dtype=index_dtype)
    out = coeffs[segment, 0] * seeds[0].astype(jnp.float32)
    for k in range(1, seeds.shape[0]):
        out = out + coeffs[segment, k] * seeds[k].astype(jnp.float32)
    return out.astype(dtype or seeds.dtype)


class ChildScorer:
    """``scorer(children) -> scores [B, N]`` (numpy float32), children scored on ``devices`` in parallel.

    bank: the :class:`~m2n2_jax.algorithm.recipes.SeedBank`; score_vector:
    flat vector [D] -> per-datapoint scores [N] (jax-traceable); devices: the
    devices of this process to use (default all local ones); dtype: "float32"
    or "bfloat16" (children materialised in that dtype for scoring).
    ``stats()`` gives the per-child scoring time and peak memory.
    """

    def __init__(self, bank, score_vector, devices=None, dtype: str = "float32"):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        if dtype not in DTYPES:
            raise ConfigError(f"scoring dtype must be one of {', '.join(DTYPES)} (got {dtype!r}).")
        self.devices = list(jax.local_devices() if devices is None else devices)
        if not self.devices:
            raise ConfigError("no devices to score on; pass at least one.")
        self.dtype, self.bank = dtype, bank
        self.mesh = Mesh(np.array(self.devices), ("children",))
        self._children = NamedSharding(self.mesh, P("children"))
        self.seeds = jax.device_put(jnp.asarray(bank.seeds, jnp.dtype(dtype)), NamedSharding(self.mesh, P()))

        def local(seeds, bounds, coeffs):
            return jax.lax.map(lambda c: jnp.asarray(score_vector(materialise(seeds, *c)), jnp.float32),
                               (bounds, coeffs))

        self._run = jax.jit(jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P("children"), P("children")),
                                          out_specs=P("children"), check_vma=False))
        self._steps, self._children_scored, self._padded = [], 0, 0

    def __call__(self, children) -> np.ndarray:
        bounds, coeffs, count = encode(children, len(self.devices), self.bank.num_seeds, self.bank.size)
        start = time.perf_counter()
        scores = np.asarray(self._run(self.seeds, jax.device_put(bounds, self._children),
                                      jax.device_put(coeffs, self._children)))
        self._steps.append((time.perf_counter() - start, count))
        self._children_scored += count
        self._padded += bounds.shape[0]
        return scores[:count]

    def stats(self) -> dict:
        """Per-child scoring time (the first call, which compiles, apart) and peak memory, for results.json."""
        seconds = np.asarray([t for t, _ in self._steps], np.float64)
        counts = np.asarray([c for _, c in self._steps], np.int64)
        total, devices = float(seconds.sum()), len(self.devices)
        out = {"devices": devices, "device_kind": self.devices[0].device_kind, "platform": self.devices[0].platform,
               "dtype": self.dtype, "calls": int(seconds.size), "children_scored": self._children_scored,
               "padding_children": self._padded - self._children_scored, "scoring_seconds": round(total, 4),
               "first_call_seconds": round(float(seconds[0]), 4) if seconds.size else None,
               "seconds_per_child": round(total / max(self._children_scored, 1), 6),
               "seconds_per_child_after_first_call": (round(float(seconds[1:].sum() / counts[1:].sum()), 6)
                                                      if seconds.size > 1 else None),
               "seconds_per_child_per_device": round(total * devices / max(self._padded, 1), 6),
               "peak_host_rss_bytes": peak_rss_bytes()}
        out["peak_device_bytes"] = peak_device_bytes(self.devices)
        return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_device_bytes(devices):
    """Largest ``peak_bytes_in_use`` over the devices (GPUs, TPUs); None where JAX does not report it (CPUs)."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory statistics
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None
