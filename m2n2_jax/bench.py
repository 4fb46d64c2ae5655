"""Throughput benchmark: the compiled engine against the per-child loop.

Every setting is measured in the same process, interleaved over repeats
(these machines are noisy), and reported as forward passes per second and as
a ratio to the per-child Python loop. A dense-GEMM measurement gives the
machine's FLOP ceiling for context: no evaluator of the digits MLP can beat
peak_flops / flops_per_forward_pass.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import runner
from .config import M2N2Config
from .per_child_loop import PerChildLoop
from .tasks import digits_task

# (label, runs, children per step, eval batch size)
ENGINE_SETTINGS = [
    ("engine, 1 run, B=1", 1, 1, 1),
    ("engine, 10 runs, B=1", 10, 1, 2),
    ("engine, 1 run, B=16", 1, 16, 2),
    ("engine, 10 runs, B=4", 10, 4, 2),
    ("engine, 20 runs, B=4", 20, 4, 4),
]


def _engine_timer(task, runs, batch, eval_batch, forward_passes):
    config = M2N2Config(children_per_step=batch)
    steps_per_log = max(1, 100 // batch)
    num_logs = max(1, forward_passes // (steps_per_log * batch))
    chunk = runner.make_chunk(config, task, steps_per_log, eval_batch)
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
    fn = jax.jit(lambda v: runner.evaluate(task.score_vector, v, eval_batch))
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


def gemm_gflops(size: int = 2048, reps: int = 5) -> float:
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
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


def run_benchmark(forward_passes: int = 2000, loop_forward_passes: int = 300, repeats: int = 3,
                  out: str | None = None) -> dict:
    task = digits_task()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
          f"{repeats} interleaved repeats, best of each reported", flush=True)
    timers = {"per-child Python loop (reference procedure)": _loop_timer(task, loop_forward_passes)}
    for label, runs, batch, eval_batch in ENGINE_SETTINGS:
        timers[label] = _engine_timer(task, runs, batch, eval_batch, forward_passes)
    timers["evaluation only, 20 children, lax.map(batch_size=4)"] = _eval_only_timer(task, 20, 4, forward_passes)
    samples = {label: [] for label in timers}
    gemm = []
    for rep in range(repeats):
        gemm.append(gemm_gflops())
        for label, measure in timers.items():
            samples[label].append(measure())
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    best = {label: max(v) for label, v in samples.items()}
    loop = best["per-child Python loop (reference procedure)"]
    ceiling = max(gemm) * 1e9 / mlp_flops_per_forward(task)
    rows = [(label, fps, fps / loop, fps / ceiling) for label, fps in best.items()]
    table = ["| setting | forward passes / s | vs loop | of FLOP ceiling |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {fps:,.0f} | {ratio:.1f}x | {frac:.0%} |" for label, fps, ratio, frac in rows]
    table.append(f"\nFLOP ceiling: dense 2048^3 GEMM at {max(gemm):.0f} GFLOP/s / "
                 f"{mlp_flops_per_forward(task) / 1e6:.1f} MFLOP per forward pass = {ceiling:,.0f} forward passes/s.")
    text = "\n".join(table)
    print(text)
    record = {"forward_passes_per_second": best, "samples": samples, "ratio_to_loop":
              {label: ratio for label, _, ratio, _ in rows}, "gemm_gflops": max(gemm),
              "flop_ceiling_fp_per_s": ceiling, "jax": jax.__version__, "cpu_count": os.cpu_count()}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench.json"), "w") as f:
            json.dump(record, f, indent=1)
        with open(os.path.join(out, "bench.md"), "w") as f:
            f.write(text + "\n")
    return record
