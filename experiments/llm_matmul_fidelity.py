"""What bfloat16 matmul operands (float32 accumulation) change on SmolLM2-135M, against float32.

    PYTHONPATH=. python experiments/llm_matmul_fidelity.py --prompts 16 --new-tokens 24 --out docs/results/llm-speed

1. Greedy agreement: the KV-cache greedy answers to the same chat prompts in both precisions; how many
   are identical and, where they differ, after how many tokens.
2. Fitness flips: teacher-forced exact match (m2n2_jax.llm.scoring) of rows whose answers are the
   float32 model's own greedy answers, scored in both precisions on the base model and on children
   (the base with Gaussian noise of a given fraction of each tensor's std, standing in for merged
   children); a flip is a row whose exact match differs between the precisions.
Writes matmul-fidelity.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.llm import checkpoint, generate, hf_tokenizer, scoring
from m2n2_jax.bench_llm import default_gguf, example_rows


def perturbed(params, fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + jnp.asarray(rng.normal(0, fraction * float(np.std(a)) + 1e-12, a.shape), a.dtype),
                        params)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--noise", type=float, nargs="*", default=[0.02, 0.05])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    gguf = args.gguf or default_gguf()
    config, params = checkpoint.load(gguf)
    tokenizer = hf_tokenizer.load_hf_tokenizer(gguf)
    prompts = [tokenizer.encode_prompt(hf_tokenizer.chat_prompt(gguf, m)) for m, _ in example_rows(args.prompts, seed=1)]
    answers, seconds = {}, {}
    for matmul in ("float32", "bfloat16"):
        start = time.perf_counter()
        answers[matmul] = generate.greedy(config, params, prompts, args.new_tokens, tokenizer.eos_ids, matmul=matmul)
        seconds[matmul] = time.perf_counter() - start
    same = [a == b for a, b in zip(answers["float32"], answers["bfloat16"])]
    first_diff = [next(i for i, (x, y) in enumerate(zip(a + [-1], b + [-2])) if x != y)
                  for a, b, s in zip(answers["float32"], answers["bfloat16"], same) if not s]
    rows = [p + a for p, a in zip(prompts, answers["float32"])]
    width = max(len(r) for r in rows)
    tokens, targets = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        tokens[i, :len(r)] = r
        targets[i, len(p):len(r)] = 1
    plan = scoring.plan_rows(tokens, targets, 16)
    models = {"base": params, **{f"base + noise {f:g} std": perturbed(params, f, k) for k, f in enumerate(args.noise)}}
    flips = {}
    for name, p in models.items():
        got = {m: np.asarray(jax.jit(scoring.exact_match_scorer(config, plan, tokenizer.eos_ids, matmul=m))(p))
               for m in ("float32", "bfloat16")}
        flips[name] = {"float32_mean": float(got["float32"].mean()), "bfloat16_mean": float(got["bfloat16"].mean()),
                       "flips": int((got["float32"] != got["bfloat16"]).sum()), "rows": len(rows)}
    record = {"gguf": os.path.basename(gguf), "prompts": len(prompts), "new_tokens": args.new_tokens,
              "greedy_identical": int(sum(same)), "first_difference_at": first_diff,
              "generation_seconds": seconds, "fitness": flips}
    lines = [f"Greedy answers identical in both precisions: {sum(same)}/{len(same)} prompts "
             f"({args.new_tokens} new tokens at most); where they differ, first at token {first_diff}. "
             f"Generation time float32 {seconds['float32']:.0f} s, bfloat16 {seconds['bfloat16']:.0f} s "
             "(including compilation).", "", "| model | exact match float32 | exact match bfloat16 | flips |",
             "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['float32_mean']:.3f} | {v['bfloat16_mean']:.3f} | {v['flips']}/{v['rows']} |"
              for k, v in flips.items()]
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "matmul-fidelity.json"), "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
