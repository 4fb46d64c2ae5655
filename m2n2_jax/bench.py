"""Throughput benchmark: the compiled engine against the per-child loop.

Every setting is measured in the same process, interleaved over repeats
(these machines are noisy), and reported as forward passes per second and as
a ratio to the per-child Python loop. A dense-GEMM measurement gives the
machine's FLOP ceiling for context: no evaluator of the digits MLP can beat
peak_flops / flops_per_forward_pass. Rows marked "bf16 scoring" score children
with bfloat16 matmuls (``matmul_precision="bfloat16"``) and are compared with
the bfloat16 GEMM ceiling; all other rows, and the loop, are float32.
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from m2n2_jax.engine import runner
from m2n2_jax.engine.devices import device_mesh, evaluate
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.engine.per_child_loop import PerChildLoop
from m2n2_jax.tasks import digits_task

# (label, runs, children per step, eval batch size, matmul precision of the scores, all devices?, mutation noise)
ENGINE_SETTINGS = [
    ("engine, 1 run, B=1", 1, 1, 1, "float32", False, "threefry"),
    ("engine, 10 runs, B=1", 10, 1, 1, "float32", False, "threefry"),
    ("engine, 10 runs, B=1, {n} CPU devices", 10, 1, 1, "float32", True, "threefry"),
    ("engine, 10 runs, B=1, {n} CPU devices, hash noise", 10, 1, 1, "float32", True, "hash"),
    ("engine, 1 run, B=16", 1, 16, 1, "float32", False, "threefry"),
    ("engine, 20 runs, B=4, {n} CPU devices", 20, 4, 1, "float32", True, "threefry"),
    ("engine, 1 run, B=16, bf16 scoring", 1, 16, 1, "bfloat16", False, "threefry"),
    ("engine, 10 runs, B=1, {n} CPU devices, bf16 scoring", 10, 1, 1, "bfloat16", True, "threefry"),
    ("engine, 10 runs, B=1, {n} CPU devices, bf16 scoring, hash noise", 10, 1, 1, "bfloat16", True, "hash"),
]
# (label, children, eval batch size, matmul precision)
EVAL_SETTINGS = [
    ("evaluation only, 20 children, lax.map(batch_size=4)", 20, 4, "float32"),
    ("evaluation only, 20 children, lax.map(batch_size=4), bf16 scoring", 20, 4, "bfloat16"),
]


def _engine_timer(task, runs, batch, eval_batch, forward_passes, devices=None, noise: str = "threefry"):
    config = M2N2Config(children_per_step=batch, noise=noise)
    steps_per_log = max(1, 100 // batch)
    num_logs = max(1, forward_passes // (steps_per_log * batch))
    mesh = device_mesh(devices, runs, batch) if devices else None
    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch, mesh=mesh)
    state = runner.init_runs(config, task, list(range(runs)))
    state, _ = chunk(state, num_logs)  # compile and warm up
    jax.block_until_ready(state)
    holder = {"state": state}

    def measure():
        t = time.perf_counter()
        holder["state"], logged = chunk(holder["state"], num_logs)
        jax.block_until_ready(logged)
        return runs * num_logs * steps_per_log * batch / (time.perf_counter() - t)

    return measure


def _eval_only_timer(task, children, eval_batch, forward_passes):
    vectors = jax.random.normal(jax.random.PRNGKey(0), (children, task.num_params)) * 0.01
    fn = jax.jit(lambda v: evaluate(task.score_vector, v, eval_batch))
    jax.block_until_ready(fn(vectors))
    reps = max(1, forward_passes // children)

    def measure():
        t = time.perf_counter()
        for _ in range(reps):
            out = fn(vectors)
        jax.block_until_ready(out)
        return children * reps / (time.perf_counter() - t)

    return measure


def _loop_timer(task, forward_passes):
    loop = PerChildLoop(M2N2Config(key_order="reference"), task)
    loop.run(0, 5)  # compile

    def measure():
        t = time.perf_counter()
        loop.run(1, forward_passes)
        return forward_passes / (time.perf_counter() - t)

    return measure


def gemm_gflops(size: int = 2048, reps: int = 5, dtype=jnp.float32) -> float:
    """Dense size^3 GEMM rate; bfloat16 operands accumulate in float32."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    jax.block_until_ready(out)
    return 2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def mlp_flops_per_forward(task) -> float:
    train = task.info["train_size"]
    hidden = (task.num_params - 10) // (64 + 1 + 10)
    return 2.0 * train * (64 * hidden + hidden * 10)


# Instruction sets that change the speed (and bf16 rounding) of the scoring matmuls.
MATMUL_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_name() -> str:
    """The CPU's model name and matmul instruction sets (from /proc/cpuinfo on Linux, else lscpu or the
    platform), for the table header: throughput figures and bf16 rounding depend on them."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.lower().startswith("model name"))
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
        features = [f for f in MATMUL_FEATURES if f in flags]
        return f"{name} ({', '.join(features)})" if features else name
    except (OSError, StopIteration):
        pass
    try:
        import subprocess

        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def run_benchmark(forward_passes: int = 2000, loop_forward_passes: int = 300, repeats: int = 3,
                  out: str | None = None, hidden: int = 256, engine_settings=None, eval_settings=None,
                  gemm_size: int = 2048) -> dict:
    """Measure every setting (``engine_settings``/``eval_settings`` default to all rows; tests pass a
    few at a toy ``hidden`` size) and print the table, headed by the CPU it ran on."""
    engine_settings = ENGINE_SETTINGS if engine_settings is None else engine_settings
    eval_settings = EVAL_SETTINGS if eval_settings is None else eval_settings
    tasks = {p: digits_task(hidden=hidden, matmul_precision=p) for p in ("float32", "bfloat16")}
    cpu = cpu_name()
    header = (f"CPU: {cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {jax.devices()[0].platform}, "
              f"{jax.device_count()} devices; {repeats} interleaved repeats, best of each reported")
    print(header, flush=True)
    loop_label = "per-child Python loop (reference procedure)"
    timers = {loop_label: _loop_timer(tasks["float32"], loop_forward_passes)}
    precision = {loop_label: "float32"}
    devices = jax.devices()
    for label, runs, batch, eval_batch, prec, all_devices, noise in engine_settings:
        if all_devices and len(devices) == 1:
            continue  # one device: the single-device rows say it all
        label = label.format(n=len(devices))
        timers[label] = _engine_timer(tasks[prec], runs, batch, eval_batch, forward_passes,
                                      devices if all_devices else None, noise)
        precision[label] = prec
    for label, children, eval_batch, prec in eval_settings:
        timers[label] = _eval_only_timer(tasks[prec], children, eval_batch, forward_passes)
        precision[label] = prec
    samples = {label: [] for label in timers}
    gemm = {"float32": [], "bfloat16": []}
    for rep in range(repeats):
        for prec in gemm:
            gemm[prec].append(gemm_gflops(gemm_size, dtype=jnp.dtype(prec)))
        for label, measure in timers.items():
            samples[label].append(measure())
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    best = {label: max(v) for label, v in samples.items()}
    loop = best[loop_label]
    flops = mlp_flops_per_forward(tasks["float32"])
    ceiling = {prec: max(v) * 1e9 / flops for prec, v in gemm.items()}
    rows = [(label, fps, fps / loop, fps / ceiling[precision[label]]) for label, fps in best.items()]
    table = ["| setting | forward passes / s | vs loop | of FLOP ceiling |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {fps:,.0f} | {ratio:.1f}x | {frac:.0%} |" for label, fps, ratio, frac in rows]
    table.append(f"\nFLOP ceiling: dense {gemm_size}^3 GEMM at {max(gemm['float32']):.0f} GFLOP/s (float32) and "
                 f"{max(gemm['bfloat16']):.0f} GFLOP/s (bfloat16 operands, float32 accumulation) / "
                 f"{flops / 1e6:.1f} MFLOP per forward pass = {ceiling['float32']:,.0f} and "
                 f"{ceiling['bfloat16']:,.0f} forward passes/s. bf16 rows use the bfloat16 ceiling. "
                 "Engine rows draw mutation noise with threefry (the default) unless they say hash noise.")
    print("\n".join(table))
    text = "\n".join([header, ""] + table)  # the files say which CPU the figures come from
    record = {"forward_passes_per_second": best, "samples": samples, "ratio_to_loop":
              {label: ratio for label, _, ratio, _ in rows}, "matmul_precision": precision,
              "gemm_gflops": {p: max(v) for p, v in gemm.items()},
              "flop_ceiling_fp_per_s": ceiling, "jax": jax.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
              "device_count": jax.device_count()}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.json"), "w") as f:
            json.dump(record, f, indent=1)
        with open(os.path.join(out, "bench.md"), "w") as f:
            f.write(text + "\n")
    return record
