"""An accelerator check in one script: prints one Markdown table of the figures that matter on a GPU or TPU.

    python experiments/device_check.py            # the real sizes: under 8 minutes on one GPU
    python experiments/device_check.py --toy      # seconds on a CPU (what tests/test_device_check.py runs)

Rows: (1) the digits experiment, 10 runs x 50,000 forward passes, wall time
including compilation (goal: under 10 s on one GPU); (2) engine throughput
of one run at 1, 16, 64 and 256 children per step; (3) full CMA-ES at the
paper's 19,210 dimensions, seconds per generation over a short run (200
generations, so that one lazy eigendecomposition is included); (4) the
per-child scoring time of the LLM task (llm-exact-match on a small random
Llama built here, its examples from a fixed word list). ``--out FILE`` also
writes the table to FILE. The environment variable M2N2_DEVICE_CHECK=toy is
the same as --toy.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from m2n2_jax import RunOptions, evolve, method_config
from m2n2_jax.engine import runner
from m2n2_jax.engine.devices import default_eval_batch_size
from m2n2_jax.methods.evosax_es import run_es
from m2n2_jax.tasks import digits_task

SIZES = {
    "full": {"hidden": 256, "runs": 10, "forward_passes": 50_000, "throughput_fp": 20_000,
             "cma_generations": 200, "llm": {"hidden": 256, "layers": 4, "examples": 128, "children": 20}},
    "toy": {"hidden": 4, "runs": 2, "forward_passes": 200, "throughput_fp": 512,
            "cma_generations": 20, "llm": {"hidden": 16, "layers": 1, "examples": 4, "children": 2}},
}
BATCHES = (1, 16, 64, 256)
WORDS = ["a", "b", "c", "d", "e", "f", "first", "last", "?"]


def digits_runs(size: dict) -> tuple[str, str]:
    task = digits_task(hidden=size["hidden"])
    seeds = list(range(42, 42 + size["runs"]))
    res = evolve(method_config("m2n2"), task, seeds, size["forward_passes"], options=RunOptions())
    final = res.metrics["test_accuracy"][:, -1]
    return (f"digits, {len(seeds)} runs x {size['forward_passes']:,} forward passes (m2n2, B=1)",
            f"{res.wall_seconds:.1f} s wall incl. compilation; final test accuracy {final.mean():.4f}; "
            f"{res.execution['devices']} device(s), eval batch {res.execution['eval_batch_size']}")


def engine_throughput(size: dict, batch: int) -> tuple[str, str]:
    """Forward passes per second of one run at B children per step, after compilation."""
    task = digits_task(hidden=size["hidden"])
    config = method_config("m2n2", children_per_step=batch)
    steps = max(1, size["throughput_fp"] // batch)
    chunk = runner.make_chunk(config, task, steps, default_eval_batch_size(batch))
    state = runner.init_runs(config, task, [0])
    state, _ = chunk(state, 1)  # compile and warm up
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, logged = chunk(state, 1)
    jax.block_until_ready(logged)
    seconds = time.perf_counter() - start
    return (f"engine throughput, 1 run, B={batch}", f"{steps * batch / seconds:,.0f} forward passes/s "
            f"({steps * batch:,} forward passes in {seconds:.2f} s)")


def cma_es_generation(size: dict) -> tuple[str, str]:
    task = digits_task(hidden=size["hidden"])
    generations = size["cma_generations"]
    res = run_es("cma-es", task, [42], generations * 20, log_every=200)
    return (f"full CMA-ES, D={task.num_params:,}, {generations} generations of 20",
            f"{res.extra['seconds_per_generation_steady']} s per generation (median of chunks after the first); "
            f"{res.extra['eigendecompositions_per_run']} eigendecomposition(s) every {res.config['eigen_every']} "
            f"generations; {res.wall_seconds:.1f} s wall")


def llm_scoring(size: dict) -> tuple[str, str]:
    """Per-child scoring time of llm-exact-match on a random Llama (compiled, warmed up)."""
    from m2n2_jax.llm import checkpoint, model
    from m2n2_jax.llm.config import LlamaConfig
    from m2n2_jax.llm.task import exact_match_task
    from m2n2_jax.llm.word_tokenizer import WordTokenizer

    llm = size["llm"]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = WordTokenizer.build(WORDS)
        config = LlamaConfig(vocab_size=len(tokenizer.vocab), hidden_size=llm["hidden"],
                             intermediate_size=2 * llm["hidden"], num_hidden_layers=llm["layers"],
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
        checkpoint.save(os.path.join(tmp, "model"), config, model.init_params(config, 0))
        tokenizer.save(os.path.join(tmp, "model"))
        with open(os.path.join(tmp, "data.jsonl"), "w") as f:
            for _ in range(llm["examples"]):
                words = rng.choice(WORDS[:6], 3)
                f.write(json.dumps({"prompt": f"first {' '.join(words)} ?", "answer": str(words[0])}) + "\n")
        task = exact_match_task(os.path.join(tmp, "model"), os.path.join(tmp, "data.jsonl"))
        score = jax.jit(task.score_vector)
        children = [task.layout.ravel(model.init_params(config, i)) for i in range(llm["children"])]
        jax.block_until_ready(score(children[0]))  # compile
        start = time.perf_counter()
        for child in children:
            out = score(child)
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - start) / len(children)
    return (f"llm-exact-match scoring, Llama {llm['layers']} layer(s), hidden {llm['hidden']}, "
            f"{llm['examples']} examples", f"{seconds * 1e3:.1f} ms per child ({task.num_params:,} parameters)")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="toy sizes (seconds on a CPU)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    toy = args.toy or os.environ.get("M2N2_DEVICE_CHECK") == "toy"
    size = SIZES["toy" if toy else "full"]
    device = jax.devices()[0]
    started = time.perf_counter()
    rows = [digits_runs(size)]
    rows += [engine_throughput(size, b) for b in BATCHES]
    rows += [cma_es_generation(size), llm_scoring(size)]
    lines = [f"# Device check ({'toy sizes' if toy else 'full sizes'}): {device.platform}, "
             f"{getattr(device, 'device_kind', '')}, {jax.device_count()} device(s), jax {jax.__version__}", "",
             "| check | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return table


if __name__ == "__main__":
    main()
