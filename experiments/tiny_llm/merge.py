"""Whole LLM merging experiment with tiny Llamas on CPU: data, base, specialists, merges, table.

Run from the repository root:

    python -m experiments.tiny_llm.merge                          # writes runs/llm-merge
    python -m experiments.tiny_llm.merge --out docs/results/llm-merge   # regenerate the committed report

The steps are in :mod:`experiments.tiny_llm.pipeline`.
"""
from __future__ import annotations

import argparse
import sys

from experiments.tiny_llm import pipeline
from m2n2_jax.errors import M2N2Error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train two tiny Llama specialists and merge them with M2N2 and baselines.")
    parser.add_argument("--out", default="runs/llm-merge",
                        help="where results.json, table.md, merge.png go (default runs/llm-merge)")
    parser.add_argument("--models", default="runs/llm-merge/models", help="HF checkpoints of base, specialists, merge")
    parser.add_argument("--retrain", action="store_true", help="train again even if checkpoints exist")
    parser.add_argument("--budget", type=int, default=pipeline.Settings.budget, help="forward passes per evolutionary method")
    parser.add_argument("--math-steps", type=int, default=pipeline.Settings.math_steps, help="fine-tuning steps of the math specialist")
    parser.add_argument("--agent-steps", type=int, default=pipeline.Settings.agent_steps, help="fine-tuning steps of the agent specialist")
    parser.add_argument("--base-steps", type=int, default=pipeline.Settings.base_steps)
    parser.add_argument("--replay-weight", type=float, default=pipeline.Settings.replay_weight,
                        help="weight of the replayed pre-training loss during fine-tuning (default 0: none)")
    parser.add_argument("--seed", type=int, default=pipeline.Settings.seed,
                        help="seed of the data, initialisation, training and merges (default 0)")
    parser.add_argument("--models-only", action="store_true",
                        help="only train (or load) the base and the two specialists and write fitness.jsonl and "
                             "test.jsonl next to them, for m2n2 merge")
    args = parser.parse_args(argv)
    settings = pipeline.Settings(budget=args.budget, math_steps=args.math_steps, agent_steps=args.agent_steps,
                        base_steps=args.base_steps, replay_weight=args.replay_weight, seed=args.seed)
    try:
        command = " ".join(["python -m experiments.tiny_llm.merge"] + list(sys.argv[1:] if argv is None else argv))
        pipeline.run(settings, args.out, args.models, args.retrain, command, models_only=args.models_only)
    except M2N2Error as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
