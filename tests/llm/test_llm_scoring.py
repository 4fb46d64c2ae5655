"""Fast scoring (target-only logits, length buckets, a cached shared prefix) gives today's scores."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.llm import generate, model, scoring
from m2n2_jax.llm.config import LlamaConfig

CONFIG = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
PREFIX = [1, 9, 4, 7, 3]  # a "system prompt" every row starts with


@functools.lru_cache(maxsize=None)
def data(seed=0, count=13):
    params = model.init_params(CONFIG, 2)
    return params, rows(params, seed, count)


def rows(params, seed=0, count=13):
    """Right-padded rows: the prefix, a prompt of 1..20 tokens, an answer of 1..4 tokens; every other answer
    is the model's own greedy continuation (exact match 1), the rest are random (mostly 0)."""
    rng = np.random.default_rng(seed)
    prompts = [PREFIX + rng.integers(3, 32, rng.integers(1, 21)).tolist() for _ in range(count)]
    sizes = rng.integers(1, 5, count)
    greedy = generate.greedy(CONFIG, params, prompts, 4, eos_ids=[2])
    examples = [(p, greedy[i][:sizes[i]] if i % 2 else rng.integers(3, 32, sizes[i]).tolist())
                for i, p in enumerate(prompts)]
    width = max(len(p) + len(a) for p, a in examples) + 3
    tokens, targets = np.zeros((count, width), np.int32), np.zeros((count, width), np.float32)
    for i, (p, a) in enumerate(examples):
        tokens[i, :len(p) + len(a)] = p + a
        targets[i, len(p):len(p) + len(a)] = 1
    return tokens, targets


def test_target_only_logits_equal_the_full_logits_at_the_targets():
    params = model.init_params(CONFIG, 1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 32, (3, 9)), jnp.int32)
    gather = jnp.asarray([[0, 4, 8], [2, 2, 3], [7, 1, 5]], jnp.int32)
    full = model.apply(CONFIG, params, tokens)
    picked = model.apply(CONFIG, params, tokens, gather=gather)
    assert picked.shape == (3, 3, CONFIG.vocab_size)
    np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full), np.asarray(gather)[..., None], axis=1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target_only,bucket,prefix", [(True, False, False), (False, True, False),
                                                       (False, False, True), (True, True, True)])
def test_each_saving_leaves_every_score_unchanged(target_only, bucket, prefix):
    params, (tokens, targets) = data()
    want_exact, want_likelihood = generate.answer_scores(CONFIG, params, jnp.asarray(tokens), jnp.asarray(targets))
    assert 0 < float(jnp.mean(want_exact)) < 1  # both outcomes occur
    plan = scoring.plan_rows(tokens, targets, batch_size=4, bucket=bucket, prefix=prefix)
    assert len(plan.prefix) == (len(PREFIX) if prefix else 0)
    exact, likelihood = jax.jit(scoring.exact_match_scorer(CONFIG, plan, matmul="float32", target_only=target_only,
                                                           likelihood=True))(params)
    np.testing.assert_array_equal(exact, want_exact)
    np.testing.assert_allclose(likelihood, want_likelihood, rtol=1e-5)


def test_buckets_keep_padding_under_ten_percent_and_cover_every_row_once():
    _, (tokens, targets) = data(3, 40)
    plan = scoring.plan_rows(tokens, targets, batch_size=8)
    covered = np.concatenate([g.rows.reshape(-1) for g in plan.groups])
    assert sorted(covered.tolist()) == list(range(40))
    assert plan.padding_fraction <= 0.1
    unbucketed = scoring.plan_rows(tokens, targets, batch_size=8, bucket=False, prefix=False)
    assert plan.computed_tokens < unbucketed.computed_tokens


def test_prefix_cached_generation_equals_uncached():
    params, _ = data()
    rng = np.random.default_rng(5)
    prompts = [PREFIX + rng.integers(3, 32, n).tolist() for n in (1, 6, 3, 9)]
    cached = generate.greedy(CONFIG, params, prompts, 6, eos_ids=[2], prefix=True, bucket=4)
    plain = generate.greedy(CONFIG, params, prompts, 6, eos_ids=[2], prefix=False)
    assert cached == plain
    alone = [generate.greedy(CONFIG, params, [p], 6, eos_ids=[2])[0] for p in prompts[:2]]  # one prompt: no padding
    assert cached[:2] == alone


def test_bfloat16_matmuls_round_operands_and_accumulate_in_float32():
    params, (tokens, _) = data()
    exact = model.apply(CONFIG, params, jnp.asarray(tokens[:2]), matmul="float32")
    mixed = model.apply(CONFIG, params, jnp.asarray(tokens[:2]), matmul="bfloat16")
    assert mixed.dtype == jnp.float32
    assert not np.array_equal(np.asarray(mixed), np.asarray(exact))  # bfloat16 operands did round
    np.testing.assert_allclose(mixed, exact, atol=0.05 * float(jnp.max(jnp.abs(exact))))
    assert model.resolve_matmul("float32") == "float32"
    with pytest.raises(Exception, match="choose auto, float32 or bfloat16"):
        model.resolve_matmul("fp8")


@pytest.mark.parametrize("batch_size", [1, 4, 24])
def test_the_working_set_bounds_what_xla_allocates(batch_size):
    """working_bytes plus one copy of the weights (the task's scoring_bytes) is at least the temporary
    memory XLA's compiled scorer reports, and grows with the batch (a model whose weights are not
    dwarfed by XLA's fixed per-program buffers)."""
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    params = model.init_params(config, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 512, (24, 40)).astype(np.int32)
    tokens[:, :6] = PREFIX + [5]
    targets = np.zeros((24, 40), np.float32)
    for i, end in enumerate(rng.integers(12, 40, 24)):
        targets[i, end - rng.integers(1, 6):end] = 1
    plan = scoring.plan_rows(tokens, targets, batch_size=batch_size)
    compiled = jax.jit(scoring.exact_match_scorer(config, plan)).lower(params).compile()
    bound = scoring.working_bytes(config, plan) + 4 * model.num_params(params)
    assert bound >= compiled.memory_analysis().temp_size_in_bytes
    if batch_size > 1:
        smaller = scoring.plan_rows(tokens, targets, batch_size=1)
        assert scoring.working_bytes(config, plan) > scoring.working_bytes(config, smaller)


ROWS_ON_DEVICES = """
import sys, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests/llm"); sys.path.insert(0, "tests")
from test_llm_scoring import CONFIG, data
from m2n2_jax.llm import generate, scoring
params, (tokens, targets) = data()
want_exact, want_likelihood = generate.answer_scores(CONFIG, params, jnp.asarray(tokens), jnp.asarray(targets))
plan = scoring.plan_rows(tokens, targets, batch_size=4)
assert jax.device_count() == 3 and any(g.tokens.shape[1] % 3 for g in plan.groups)  # rows padded somewhere
exact, likelihood = jax.jit(scoring.exact_match_scorer(CONFIG, plan, likelihood=True, devices=jax.devices()))(params)
np.testing.assert_array_equal(exact, want_exact)
np.testing.assert_allclose(likelihood, want_likelihood, rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_rows_split_over_devices_give_the_same_scores():
    import os
    import subprocess
    import sys

    from conftest import ROOT_DIR

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "PYTHONPATH": ROOT_DIR}
    done = subprocess.run([sys.executable, "-c", ROWS_ON_DEVICES], cwd=ROOT_DIR, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
