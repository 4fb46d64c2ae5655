"""The Flax Llama against an independent numpy forward pass, checkpoints, decoding."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from m2n2_jax.errors import DataError
from m2n2_jax.llm import checkpoint, generate, model
from m2n2_jax.llm.config import LlamaConfig

TINY = dict(vocab_size=13, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-6)


def numpy_llama(cfg: dict, w: dict, tokens: np.ndarray) -> np.ndarray:
    """Logits of a Llama from HF-named [out, in] weights, written from the architecture's definition."""
    heads, kv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = hidden // heads
    eps = cfg["rms_norm_eps"]

    def norm(x, weight):
        return weight * x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps)

    def rope(x):  # x [T, H, hd]; pairs (i, i + hd/2) rotate by angle pos * theta^(-2i/hd)
        pos = np.arange(x.shape[0])[:, None]
        freq = cfg["rope_theta"] ** (-np.arange(hd // 2) * 2.0 / hd)
        ang = pos * freq[None]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

    out = []
    for seq in tokens:
        x = w["model.embed_tokens.weight"][seq].astype(np.float64)
        t = len(seq)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = norm(x, w[p + "input_layernorm.weight"])
            q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, heads, hd))
            k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, kv, hd))
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, kv, hd)
            att = np.zeros((t, heads, hd))
            for head in range(heads):
                g = head // (heads // kv)
                s = q[:, head] @ k[:, g].T / np.sqrt(hd)
                s = np.where(np.tril(np.ones((t, t))) > 0, s, -np.inf)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                att[:, head] = (s / s.sum(axis=1, keepdims=True)) @ v[:, g]
            x = x + att.reshape(t, hidden) @ w[p + "self_attn.o_proj.weight"].T
            h = norm(x, w[p + "post_attention_layernorm.weight"])
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = norm(x, w["model.norm.weight"])
        head_w = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
        out.append(x @ head_w.T)
    return np.stack(out)


def write_pytorch_style_checkpoint(directory, cfg: dict, seed=0) -> dict:
    """config.json + model.safetensors with HF tensor names and PyTorch [out, in] layout."""
    rng = np.random.default_rng(seed)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = hidden // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], hidden), "model.norm.weight": (hidden,)}
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (cfg["vocab_size"], hidden)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (cfg["num_attention_heads"] * hd, hidden),
                       p + "self_attn.k_proj.weight": (cfg["num_key_value_heads"] * hd, hidden),
                       p + "self_attn.v_proj.weight": (cfg["num_key_value_heads"] * hd, hidden),
                       p + "self_attn.o_proj.weight": (hidden, cfg["num_attention_heads"] * hd),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter),
                       p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
    weights = {n: (1 + 0.1 * rng.normal(size=s) if len(s) == 1 else 0.3 * rng.normal(size=s)).astype(np.float32)
               for n, s in shapes.items()}
    os.makedirs(directory, exist_ok=True)
    save_file(weights, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], **cfg}, f)
    return weights


@pytest.mark.parametrize("tied", [False, True])
def test_pytorch_naming_checkpoint_matches_numpy_forward(tmp_path, tied):
    cfg = {**TINY, "tie_word_embeddings": tied}
    weights = write_pytorch_style_checkpoint(tmp_path, cfg)
    config, params = checkpoint.load(str(tmp_path))
    assert config.rope_theta == 500.0 and config.tie_word_embeddings == tied
    tokens = np.random.default_rng(1).integers(0, 13, (2, 9))
    got = np.asarray(model.forward(config, params, jnp.asarray(tokens)))
    want = numpy_llama(cfg, {k: v.astype(np.float64) for k, v in weights.items()}, tokens)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    assert not np.allclose(want, numpy_llama({**cfg, "rope_theta": 10000.0},
                                             {k: v.astype(np.float64) for k, v in weights.items()}, tokens), atol=1e-3)


@pytest.mark.parametrize("shard", [None, 3000])
def test_save_load_gives_identical_logits(tmp_path, shard):
    config = LlamaConfig(**TINY)
    params = model.init_params(config, 0)
    files = checkpoint.save(str(tmp_path), config, params, max_shard_bytes=shard)
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    config2, params2 = checkpoint.load(str(tmp_path))
    assert config2 == config
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 13, (3, 7)))
    np.testing.assert_array_equal(model.forward(config, params, tokens), model.forward(config2, params2, tokens))


def test_loader_names_the_problem(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        checkpoint.load(str(tmp_path))
    weights = write_pytorch_style_checkpoint(tmp_path, TINY)
    del weights["model.norm.weight"]
    save_file(weights, os.path.join(tmp_path, "model.safetensors"))
    with pytest.raises(DataError, match="lacks 1 tensors"):
        checkpoint.load(str(tmp_path))


def test_rope_and_gqa_shapes_and_relative_positions():
    config = LlamaConfig(**TINY)
    params = model.init_params(config, 0)
    attn = params["layers_0"]["self_attn"]
    assert attn["q_proj"]["kernel"].shape == (16, 16)
    assert attn["k_proj"]["kernel"].shape == (16, 8) and attn["v_proj"]["kernel"].shape == (16, 8)
    q = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 1, 8))

    def rotated(x, pos):
        cos, sin = model.rope_tables(jnp.array([[pos]]), 8, 500.0)
        return model.apply_rope(x, cos, sin)

    assert rotated(q, 3).shape == q.shape
    np.testing.assert_allclose(jnp.linalg.norm(rotated(q, 5)), jnp.linalg.norm(q), rtol=1e-5)
    # the score depends only on the distance between positions
    np.testing.assert_allclose(jnp.sum(rotated(q, 7) * rotated(k, 4)), jnp.sum(rotated(q, 13) * rotated(k, 10)), rtol=1e-4)


def test_last_only_logits_are_the_last_row_of_the_full_logits():
    config = LlamaConfig(**TINY)
    params = model.init_params(config, 3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, config.vocab_size, (2, 7)), jnp.int32)
    full = model.apply(config, params, tokens)
    last = model.apply(config, params, tokens, last_only=True)
    assert last.shape == (2, 1, config.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


def test_greedy_decoding_is_deterministic_and_matches_a_python_loop():
    config = LlamaConfig(**TINY)
    params = model.init_params(config, 4)
    prompts = [[1, 5, 6, 7], [1, 8]]
    out = generate.greedy(config, params, prompts, 4, eos_ids=2)
    assert out == generate.greedy(config, params, prompts, 4, eos_ids=2)
    weights = {k: v.astype(np.float64) for k, v in checkpoint.params_to_hf(config, params).items()}
    for i, p in enumerate(prompts):  # one sequence at a time, no padding, numpy forward
        seq = list(p)
        for _ in range(4):
            nxt = int(np.argmax(numpy_llama(TINY, weights, np.asarray([seq]))[0, -1]))
            seq.append(nxt)
            if nxt == 2:
                break
        assert out[i] == seq[len(p):]  # the new ids, up to and including <eos>


def test_teacher_forced_exact_match_equals_greedy_answer():
    config = LlamaConfig(**TINY)
    params = model.init_params(config, 5)
    prompt = [1, 4, 6]
    greedy = generate.greedy(config, params, [prompt], 4, eos_ids=())[0]  # no end id: four new tokens
    right = prompt + greedy[:2]           # the greedy answer's first two tokens
    wrong = prompt + [(greedy[0] + 1) % 13, greedy[1]]
    tokens = jnp.asarray([right, wrong])
    targets = jnp.asarray([[0, 0, 0, 1, 1]] * 2, jnp.float32)
    exact, likelihood = jax.jit(generate.answer_scores, static_argnums=0)(config, params, tokens, targets)
    assert exact.tolist() == [1.0, 0.0]
    assert 0 < float(likelihood[1]) < float(likelihood[0]) <= 1


def test_scores_from_known_logits():
    tokens = jnp.asarray([[1, 5, 7, 2], [1, 5, 7, 2]])
    targets = jnp.asarray([[0, 0, 1, 1]] * 2, jnp.float32)
    logits = np.full((2, 4, 10), -5.0, np.float32)
    logits[:, 1, 7] = 5.0   # predicts 7 after position 1
    logits[:, 2, 2] = 5.0   # predicts <eos> after 7
    logits[1, 2, 3] = 6.0   # second example prefers token 3 over <eos>
    exact, likelihood = generate.scores_from_logits(jnp.asarray(logits), tokens, targets)
    assert exact.tolist() == [1.0, 0.0]
    logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
    want = np.exp((logp[:, 1, 7] + logp[:, 2, 2]) / 2)
    np.testing.assert_allclose(likelihood, want, rtol=1e-6)
