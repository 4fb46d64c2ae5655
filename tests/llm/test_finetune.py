"""Fine-tuning on (prompt, target) pairs: the target-only loss against a plain loop, determinism,
loss going down, length batches, and the cached Hugging Face directory."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm import checkpoint, finetune, model
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.llm.data import encode
from m2n2_jax.llm.word_tokenizer import WordTokenizer

CONFIG = LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0, max_position_embeddings=64)
WORDS = [f"w{i}" for i in range(20)]
TOKENIZER = WordTokenizer.build(WORDS)


def pairs(n=24, seed=0):
    """Prompts of 2-9 words; the target is the prompt's first two words reversed (learnable by copying)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, int(rng.integers(2, 10))))
        out.append((" ".join(words), " ".join(words[:2][::-1])))
    return out


def loop_loss(logits, tokens, targets):
    """Cross-entropy summed over target positions with plain Python loops (float64), divided by their count."""
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if targets[b, t] > 0:
                row = logits[b, t - 1].astype(np.float64)
                log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
                total += log_z - row[tokens[b, t]]
                count += 1
    return total / count


def test_target_loss_matches_a_loop_over_target_tokens_only():
    batch = encode(TOKENIZER, pairs(6))
    params = model.init_params(CONFIG, 1)
    logits = np.asarray(model.apply(CONFIG, params, jnp.asarray(batch.tokens)))
    want = loop_loss(logits, batch.tokens, batch.targets)
    got = float(finetune.target_loss(CONFIG, params, jnp.asarray(batch.tokens), jnp.asarray(batch.targets)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the mask matters: all real tokens give another value (so a loss over the prompt would fail the check above)
    everything = (batch.tokens != 0).astype(np.float32)
    assert abs(loop_loss(logits, batch.tokens, everything) - got) > 1e-3
    # targets = the answer's tokens and the end token, nothing of the prompt
    assert batch.targets.sum() == sum(len(a.split()) + 1 for _, a in pairs(6))


def test_length_batches_group_similar_lengths_and_cover_every_example():
    lengths = np.random.default_rng(0).integers(5, 200, 101)
    batches = finetune.length_batches(lengths, 8, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(101))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[i:i + 8]) for i in range(0, 101, 8)])
    assert spread < random_spread / 3


def test_loss_goes_down_and_same_seed_gives_same_params():
    batch = encode(TOKENIZER, pairs())
    s = finetune.FinetuneSettings(steps=30, batch_size=8, learning_rate=1e-2, warmup=2, pad_to=16, seed=3)
    base = model.init_params(CONFIG, 0)
    a, losses = finetune.finetune(CONFIG, base, batch, s)
    b, _ = finetune.finetune(CONFIG, base, batch, s)
    before = float(finetune.target_loss(CONFIG, base, jnp.asarray(batch.tokens), jnp.asarray(batch.targets)))
    after = float(finetune.target_loss(CONFIG, a, jnp.asarray(batch.tokens), jnp.asarray(batch.targets)))
    assert after < 0.7 * before, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c, _ = finetune.finetune(CONFIG, base, batch, finetune.FinetuneSettings(**{**s.__dict__, "seed": 4}))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
    # the base params are not consumed by buffer donation
    assert np.isfinite(np.asarray(base["norm"]["weight"])).all()


def test_specialist_is_cached_as_a_hf_directory(tmp_path):
    like = tmp_path / "base"
    checkpoint.save(str(like), CONFIG, model.init_params(CONFIG, 0))
    data = pairs(16)
    s = finetune.FinetuneSettings(steps=3, batch_size=4, learning_rate=1e-3, warmup=1, pad_to=4)
    out = str(tmp_path / "spec")
    params, info = finetune.specialist(out, CONFIG, model.init_params(CONFIG, 0), TOKENIZER, data, s, str(like))
    assert not info["cached"] and os.path.isfile(os.path.join(out, "model.safetensors"))
    again, info2 = finetune.specialist(out, CONFIG, model.init_params(CONFIG, 0), TOKENIZER, data, s, str(like))
    assert info2["cached"]
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with open(os.path.join(out, "finetune.json")) as f:
        assert json.load(f)["fingerprint"] == info["fingerprint"]
    # other data: another fingerprint, so it trains again
    _, info3 = finetune.specialist(out, CONFIG, model.init_params(CONFIG, 0), TOKENIZER, pairs(16, 1), s, str(like))
    assert not info3["cached"]


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="compute_dtype"):
        finetune.FinetuneSettings(compute_dtype="float16")
    with pytest.raises(ConfigError, match="steps"):
        finetune.FinetuneSettings(steps=0)
