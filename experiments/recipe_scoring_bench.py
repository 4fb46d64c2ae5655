"""Per-child scoring time and peak memory of recipe children on a SmolLM2-135M-shaped Llama.

Two random-initialised seeds of SmolLM2-135M's shape (no download: the time of
a forward pass depends on the shapes only), children with a few segments,
scored by :class:`m2n2_jax.engine.recipe_scoring.ChildScorer` (materialise on
the device, then a forward pass over a fixed batch of token sequences) in
float32 and in bfloat16, on all of this process's devices. Writes a JSON
record (``--out``) with the scorer's statistics and the environment.

    python experiments/recipe_scoring_bench.py --out runs/recipe-scoring.json
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/recipe_scoring_bench.py ...
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.engine import recipe_scoring
from m2n2_jax.io.results import environment
from m2n2_jax.llm import model
from m2n2_jax.llm.config import LlamaConfig

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30, help="transformer layers (SmolLM2-135M: 30)")
    ap.add_argument("--sequences", type=int, default=8, help="token sequences per child (the fitness batch)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per sequence")
    ap.add_argument("--children", type=int, default=4, help="children per call (a step's batch)")
    ap.add_argument("--calls", type=int, default=3, help="calls per dtype (the first compiles)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", default="runs/recipe-scoring.json")
    args = ap.parse_args(argv)

    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers})
    params = [model.init_params(config, seed=s) for s in (0, 1)]
    layout = VectorLayout.of(params[0])
    bank = recipes.SeedBank.build(np.stack([np.asarray(layout.ravel(p)) for p in params]))
    del params
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (args.sequences, args.tokens)))

    def score_vector(x):
        """Per sequence: the fraction of next tokens the model predicts (argmax), a cheap stand-in fitness."""
        logits = model.apply(config, layout.unravel(x), tokens)
        return jnp.mean(jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:], axis=1).astype(jnp.float32)

    rng = np.random.default_rng(1)
    record = {"command": "python experiments/recipe_scoring_bench.py " + " ".join(argv or []),
              "num_params": bank.size, "config": {**SMOLLM2_135M, "num_hidden_layers": args.layers},
              "sequences": args.sequences, "tokens": args.tokens, "children_per_call": args.children, "runs": {}}
    for dtype in args.dtypes.split(","):
        scorer = recipe_scoring.ChildScorer(bank, score_vector, dtype=dtype)
        start = time.perf_counter()
        for _ in range(args.calls):
            children = []
            for _ in range(args.children):
                m = int(rng.integers(1, 9))
                inner = np.sort(rng.choice(np.arange(1, bank.size), m - 1, replace=False))
                children.append(recipes.Recipe(np.concatenate([[0], inner, [bank.size]]).astype(np.int64),
                                               rng.uniform(0, 1, (m, 2))))
            scorer(children)
        record["runs"][dtype] = {**scorer.stats(), "wall_seconds": round(time.perf_counter() - start, 3)}
        print(dtype, json.dumps(record["runs"][dtype]), flush=True)
    record["environment"] = environment()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    return record


if __name__ == "__main__":
    main()
