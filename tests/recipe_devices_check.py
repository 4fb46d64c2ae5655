"""Run by tests/engine/test_recipe_scoring.py under XLA_FLAGS=--xla_force_host_platform_device_count=4.

Recipe-archive merges (2 runs, 4 children per step) on 1 device and on 4
simulated devices, in float32 and in bfloat16 scoring, and a direct check of
the scorer on 4 devices against a per-child numpy loop; prints one JSON line.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import recipes
from m2n2_jax.engine import recipe_runs, recipe_scoring
from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.methods.registry import method_config
from recipe_task import linear_task  # tests/recipe_task.py: a script's own folder is on its path

task, seeds = linear_task()
config = method_config("m2n2", mutation_std=0.0, children_per_step=4)
out = {"device_count": jax.device_count()}
for dtype in ("float32", "bfloat16"):
    runs = {n: recipe_runs.merge(config, task, seeds, [3, 4], 240, log_every=80, scoring_dtype=dtype,
                                 options=RunOptions(devices=jax.devices()[:n])) for n in (1, 4)}
    a, b = runs[1], runs[4]
    sa, sb = (r.extra["execution"]["scoring"] for r in (a, b))
    out[dtype] = {
        "recipes_equal": all(np.array_equal(x.bounds, y.bounds) and np.array_equal(x.coeffs, y.coeffs)
                             for ra, rb in zip(a.state.state, b.state.state)
                             for x, y in zip(ra.recipes, rb.recipes)),
        "scores_equal": all(np.array_equal(ra.scores, rb.scores) for ra, rb in zip(a.state.state, b.state.state)),
        "curves_equal": all(np.array_equal(a.metrics[k], b.metrics[k]) for k in a.metrics),
        "best_equal": bool(np.array_equal(a.best, b.best)),
        "inserted": [int(r.inserted) for r in a.state.state],
        "train_gain": float(np.max(a.metrics["best_train_score"][:, -1]) - np.max(a.metrics["best_train_score"][:, 0])),
        "devices": [sa["devices"], sb["devices"]], "children_scored": [sa["children_scored"], sb["children_scored"]],
        "dtype": [sa["dtype"], sb["dtype"]],
    }
# the scorer alone: 6 children of different segment counts on 4 devices (padded to 8) against numpy
bank = recipes.SeedBank.build(seeds)
rng = np.random.default_rng(0)
children = []
for m in (1, 2, 3, 5, 9, 17):
    bounds = np.concatenate([[0], np.sort(rng.choice(np.arange(1, bank.size), m - 1, replace=False)), [bank.size]])
    children.append(recipes.Recipe(bounds.astype(np.int64), rng.uniform(-1, 1, (m, 2))))
scorer = recipe_scoring.ChildScorer(bank, lambda x: jnp.stack([jnp.sum(x), jnp.sum(x * x)]), jax.devices())
got = scorer(children)
want = np.stack([[v.astype(np.float64).sum(), (v.astype(np.float64) ** 2).sum()]
                 for v in (bank.materialise(c) for c in children)])
out["scorer"] = {"max_rel_err": float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1))),
                 "shape": list(got.shape), "padding": scorer.stats()["padding_children"]}
print(json.dumps(out))
