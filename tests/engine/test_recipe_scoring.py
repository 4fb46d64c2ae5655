"""Recipe children scored on several devices (children sharded, seeds replicated), float32 and bfloat16."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TESTS_DIR as HERE
from m2n2_jax.algorithm import recipes
from m2n2_jax.engine import recipe_runs, recipe_scoring
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods.registry import method_config
from recipe_task import linear_task  # tests/recipe_task.py (tests/ is on pytest's pythonpath)


def random_children(bank, counts, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for m in counts:
        inner = np.sort(rng.choice(np.arange(1, bank.size), m - 1, replace=False))
        out.append(recipes.Recipe(np.concatenate([[0], inner, [bank.size]]).astype(np.int64),
                                  rng.uniform(-1, 1, (m, bank.num_seeds))))
    return out


def test_four_simulated_devices_give_the_archives_of_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "recipe_devices_check.py")], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 4
    for dtype in ("float32", "bfloat16"):
        got = out[dtype]
        assert got["devices"] == [1, 4] and got["dtype"] == [dtype, dtype], got
        # the same recipes, scores, curves and merged model on 1 and on 4 devices
        assert got["recipes_equal"] and got["scores_equal"] and got["curves_equal"] and got["best_equal"], got
        assert got["children_scored"][0] == got["children_scored"][1] == 2 * 240 + 2
        assert got["train_gain"] > 0 and min(got["inserted"]) > 0, got      # the runs really evolved
    assert out["scorer"]["shape"] == [6, 2] and out["scorer"]["padding"] == 2
    assert out["scorer"]["max_rel_err"] < 1e-5


def test_device_materialisation_matches_the_host_loop():
    rng = np.random.default_rng(1)
    bank = recipes.SeedBank.build(rng.normal(size=(3, 1000)).astype(np.float32), block=64)
    for child in random_children(bank, (1, 4, 130)):   # 130 segments: a 16-bit segment index
        bounds, coeffs, count = recipe_scoring.encode([child], 1, 3, 1000)
        got = np.asarray(recipe_scoring.materialise(jnp.asarray(bank.seeds), bounds[0], coeffs[0]))
        np.testing.assert_allclose(got, bank.materialise(child), rtol=1e-6, atol=1e-6)


def test_bfloat16_scoring_hands_the_score_function_rounded_children():
    rng = np.random.default_rng(2)
    bank = recipes.SeedBank.build(rng.normal(size=(2, 300)).astype(np.float32))
    children = random_children(bank, (1, 3, 7), seed=3)
    seen = []

    def identity_scores(x):
        seen.append(x.dtype)
        return x.astype(jnp.float32)                 # the child itself, as its "scores"

    f32 = recipe_scoring.ChildScorer(bank, identity_scores, jax.devices()[:1])(children)
    bf16 = recipe_scoring.ChildScorer(bank, identity_scores, jax.devices()[:1], "bfloat16")(children)
    assert seen == [jnp.float32, jnp.bfloat16]
    want = np.stack([bank.materialise(c) for c in children])
    np.testing.assert_allclose(f32, want, rtol=1e-6, atol=1e-6)
    # bf16 keeps 8 significant bits: within 2^-8 relative of the float32 child (plus the seeds' own rounding)
    assert np.all(np.abs(bf16 - want) <= 2.0 ** -7 * np.abs(want) + 2.0 ** -7 * np.abs(bank.seeds).max())
    assert not np.array_equal(bf16, f32)
    with pytest.raises(ConfigError, match="scoring dtype"):
        recipe_scoring.ChildScorer(bank, identity_scores, dtype="float16")


def test_merge_records_per_child_time_and_peak_memory():
    task, seeds = linear_task()
    config = method_config("m2n2", mutation_std=0.0, children_per_step=2)
    res = recipe_runs.merge(config, task, seeds, [0], 20, log_every=10)
    scoring = res.extra["execution"]["scoring"]
    assert scoring["children_scored"] == 22 and scoring["calls"] == 11 and scoring["dtype"] == "float32"
    assert scoring["seconds_per_child"] > 0 and scoring["seconds_per_child_after_first_call"] > 0
    assert scoring["peak_host_rss_bytes"] > 10 * 2 ** 20
    assert "peak_device_bytes" in scoring           # None on CPUs, where JAX reports no device memory
    json.dumps(res.extra)                           # goes into results.json as is
