"""Diagnostic for a finished SmolLM2 merge run: would a task-balanced pick have done better?

The searches return the child with the best mean over fitness datapoints (16 math problems + 8 agent goals
by default, so math weighs 2:1), while the table's average weighs the two tasks equally. This replays a
search from the run's memo (deterministic, so the same children; every score is read back, nothing is
re-scored), picks the child with the best (math share + agent share) / 2 and evaluates it on the held-out
sets like every row (cached in ``RUN/evals``). Writes ``RUN/diagnostics/balanced_pick.json``.

    python -m experiments.smollm2.balanced_pick --run runs/smollm2-merge --methods m2n2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.algorithm.flatten import VectorLayout
from experiments.smollm2 import pipeline, search, specialists


class RecordingScorer(search.Scorer):
    """A scorer that keeps every (recipe, scores) it returns and refuses to score anything new."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def __call__(self, recipe):
        scores = super().__call__(recipe)
        self.seen.append((recipe, scores))
        return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/smollm2-merge")
    parser.add_argument("--methods", default="m2n2")
    args = parser.parse_args(argv)
    with open(os.path.join(args.run, "run.json")) as f:
        s = pipeline.Settings(**json.load(f)["settings"])
    config, base, tokenizer = specialists.load_base()
    specs = specialists.make_specialists(config, base, tokenizer, seed=s.seed)
    layout = VectorLayout.of(base)
    seeds = np.stack([np.asarray(layout.ravel(specs[t][0])) for t in specialists.TASKS])
    bank = recipes.SeedBank.build(seeds)

    def no_new_scores(params):
        raise RuntimeError("a child is missing from the run's memo: replay with the run's own settings")

    memo = search.Memo(os.path.join(args.run, "memo", "seeds.json"))
    seed_scores = np.stack([search.Scorer(bank, layout, no_new_scores, memo).score_vector(v) for v in seeds])
    num_math = s.math_fitness
    out = {}
    for method in args.methods.split(","):
        scorer = RecordingScorer(bank, layout, no_new_scores,
                                 search.Memo(os.path.join(args.run, "memo", f"{method}.json")))
        recipe, scores, _, _ = search.run_m2n2(method, scorer, seed_scores, s.budget, s.warmup,
                                                    s.archive_size, s.seed)
        balanced = [(float(np.mean(sc[:num_math])) + float(np.mean(sc[num_math:]))) / 2 for _, sc in scorer.seen]
        pick = int(np.argmax(balanced))
        child, child_scores = scorer.seen[pick]
        vector = bank.materialise(child)
        name = f"{method}-balanced-pick"
        specialists.log(f"{name}: child {pick + 1} of {len(scorer.seen)}, held-out evaluation")
        ev = pipeline.held_out(name, config, layout.unravel(vector), tokenizer, s, args.run,
                                    pipeline.vector_key(vector))
        out[method] = {
            "search_pick": {"fitness_math": float(np.mean(scores[:num_math])),
                            "fitness_agent": float(np.mean(scores[num_math:]))},
            "balanced_pick": {"child": pick + 1, "fitness_math": float(np.mean(child_scores[:num_math])),
                              "fitness_agent": float(np.mean(child_scores[num_math:])),
                              "math_accuracy": ev["math_accuracy"], "agent_reward": ev["agent_reward"],
                              "agent_success": ev["agent_success"],
                              "average": (ev["math_accuracy"] + ev["agent_reward"]) / 2}}
        specialists.log(f"{name}: {out[method]['balanced_pick']}")
    os.makedirs(os.path.join(args.run, "diagnostics"), exist_ok=True)
    with open(os.path.join(args.run, "diagnostics", "balanced_pick.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
