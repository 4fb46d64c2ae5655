"""Hugging Face checkpoints in and out, judged by transformers (with torch, from the test extra).

Tiny random checkpoints of each supported family are saved by transformers itself
(its current config layout), plus hand-written transformers-4.x-layout configs;
the project's logits must match transformers' within 1e-4 (float32), and what the
project writes must load back in transformers with no missing keys and the same logits.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from m2n2_jax import cli  # noqa: E402
from m2n2_jax.errors import DataError  # noqa: E402
from m2n2_jax.llm import checkpoint, generate, hf_tokenizer, model  # noqa: E402

BASE = dict(vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
FAMILIES = {  # name -> (transformers config class, extra fields)
    "llama-llama3-bias": ("LlamaConfig", dict(rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0},
                                               attention_bias=True, mlp_bias=True, head_dim=16)),
    "llama-tied": ("LlamaConfig", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                                  "rope_theta": 500000.0})),
    "mistral-window": ("MistralConfig", dict(sliding_window=4)),
    "qwen2": ("Qwen2Config", dict()),
    "qwen3": ("Qwen3Config", dict(head_dim=8, tie_word_embeddings=True)),
}
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(12)]


def hf_model(kind: str, seed: int = 0, dtype=None):
    """Random weights (std 0.4); <eos>'s output row scaled up so that greedy answers often stop."""
    cls, extra = FAMILIES[kind]
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**BASE, **extra))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
        m.get_output_embeddings().weight[2] *= 3
    return m.to(dtype) if dtype is not None else m.eval()


def write_tokenizer(directory):
    """A word-level tokenizer.json (no <bos>: transformers may pick a family's own tokenizer class, e.g.
    Qwen2's, which would ignore a post-processor that adds one)."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
                   "pad_token": "<pad>", "unk_token": "<unk>"}, f)


def hf_logits(m, tokens, mask=None):
    with torch.no_grad():
        return m(torch.tensor(tokens), attention_mask=None if mask is None else torch.tensor(mask)).logits.float().numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in FAMILIES:
        m = hf_model(kind)
        m.save_pretrained(root / kind)
        write_tokenizer(root / kind)
        out[kind] = (m, str(root / kind))
    return out


TOKENS = np.random.default_rng(0).integers(3, 16, (3, 11))
MASK = np.ones_like(TOKENS)
MASK[1, 8:] = 0  # right padding: the real positions must not see it
MASK[2, 5:] = 0


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_logits_and_round_trip_match_transformers(saved, kind, tmp_path):
    m, directory = saved[kind]
    config, params = checkpoint.load(directory)
    want = hf_logits(m, TOKENS, MASK)
    got = np.asarray(model.forward(config, params, jnp.asarray(TOKENS), jnp.asarray(MASK)))
    real = MASK.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    # written back by the project: transformers loads it, nothing missing, same logits, same config fields
    checkpoint.save(str(tmp_path), config, params, like=directory)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    np.testing.assert_allclose(hf_logits(back, TOKENS, MASK)[real], want[real], atol=1e-5, rtol=0)
    before, after = (json.loads((p / "config.json").read_text()) for p in (type(tmp_path)(directory), tmp_path))
    assert after == before  # float32 in, float32 out: nothing changed
    assert (tmp_path / "tokenizer.json").read_text() == (type(tmp_path)(directory) / "tokenizer.json").read_text()


def test_families_differ_where_transformers_does():
    """The test above can fail: dropping the llama3 scaling or the biases changes the logits a lot."""
    import dataclasses

    m = hf_model("llama-llama3-bias")
    config = checkpoint.LlamaConfig.from_hf(m.config.to_dict())
    params = checkpoint.hf_to_params(config, {k: v.numpy() for k, v in m.state_dict().items()})
    want = hf_logits(m, TOKENS)
    for change in (dict(rope_scaling=()), dict(rope_theta=10000.0)):
        other = np.asarray(model.forward(dataclasses.replace(config, **change), params, jnp.asarray(TOKENS)))
        assert np.abs(other - want).max() > 1e-2, change
    no_bias = {k: v for k, v in params.items()}
    zeroed = {**no_bias, "layers_0": {**params["layers_0"], "self_attn": {
        **params["layers_0"]["self_attn"], "q_proj": {**params["layers_0"]["self_attn"]["q_proj"],
                                                      "bias": jnp.zeros(16 * 4)}}}}
    assert np.abs(np.asarray(model.forward(config, zeroed, jnp.asarray(TOKENS))) - want).max() > 1e-2


@pytest.mark.parametrize("scaling", [None, LLAMA3_ROPE])
def test_transformers_4x_layout_hand_written(saved, tmp_path, scaling):
    """rope_theta (and rope_scaling) at the top level, torch_dtype: the config.json transformers 4.x wrote."""
    m = hf_model("llama-tied")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **BASE, "rope_theta": 500000.0,
           "tie_word_embeddings": True, "torch_dtype": "float32", "hidden_act": "silu", "rms_norm_eps": 1e-6}
    if scaling:
        cfg["rope_scaling"] = scaling
    m.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "config.json").write_text(json.dumps(cfg))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "src"))
    config, params = checkpoint.load(str(tmp_path / "src"))
    assert config.rope_theta == 500000.0 and config.rope.get("rope_type") == (scaling or {}).get("rope_type")
    want = hf_logits(reference, TOKENS)
    np.testing.assert_allclose(np.asarray(model.forward(config, params, jnp.asarray(TOKENS))), want, atol=1e-4, rtol=0)
    checkpoint.save(str(tmp_path / "out"), config, params, like=str(tmp_path / "src"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written == cfg  # the input's layout and fields, torch_dtype included
    np.testing.assert_allclose(hf_logits(transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")),
                                         TOKENS), want, atol=1e-5, rtol=0)


def test_sharded_bf16_stays_bf16(tmp_path):
    m = hf_model("qwen2", dtype=torch.bfloat16)
    m.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    config, params = checkpoint.load(str(tmp_path / "src"))
    got = np.asarray(model.forward(config, params, jnp.asarray(TOKENS)))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "src"), dtype=torch.float32)
    want = hf_logits(reference, TOKENS)  # bf16 weights, float32 arithmetic on both sides
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    files = checkpoint.save(str(tmp_path / "out"), config, params, like=str(tmp_path / "src"), max_shard_bytes=30_000)
    assert "model.safetensors.index.json" in files
    assert checkpoint.weights_dtype(str(tmp_path / "out")) == "bfloat16"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert back.dtype == torch.bfloat16
    for name, tensor in m.state_dict().items():  # bf16 -> float32 -> bf16 is exact
        assert torch.equal(back.state_dict()[name].float(), tensor.float()), name


@pytest.mark.parametrize("field,value,needle", [
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope_type 'yarn' is not supported"),
    ("model_type", "gpt_neox", "model_type 'gpt_neox' is not supported"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor 0.5 is not supported"),
    ("use_sliding_window", True, "use_sliding_window True is not supported"),
])
def test_refusals_are_one_line_naming_field_value_and_directory(saved, tmp_path, capsys, field, value, needle):
    _, directory = saved["qwen2"]
    bad = tmp_path / "bad"
    os.makedirs(bad)
    cfg = json.loads(open(os.path.join(directory, "config.json")).read())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=needle) as err:
        checkpoint.load(str(bad))
    assert str(bad) in str(err.value)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "w1 w2", "answer": "w3"}\n')
    code = cli.main(["merge", str(bad), str(bad), "--task", "llm-exact-match", "--task-arg", f"data={data}",
                     "--forward-passes", "4", "--out", str(tmp_path / "o"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0] and str(bad) in lines[0], lines


def test_greedy_with_cache_matches_transformers_generate(saved):
    """Batched, left-padded, stopping at EOS; and a stop string, as transformers' stop_strings does."""
    m, directory = saved["mistral-window"]  # window 4: the cache must apply it as transformers does
    config, params = checkpoint.load(directory)
    prompts = [[1, 5, 6, 7, 8, 9, 10], [1, 11], [1, 4, 12, 13]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    eos = 2
    with torch.no_grad():
        want = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=9, do_sample=False, eos_token_id=eos,
                          pad_token_id=0)[:, width:].tolist()
    got = generate.greedy(config, params, prompts, 9, [eos])
    for g, w in zip(got, want):
        assert g == w[:len(g)] and (len(g) == 9 or g[-1] == eos) and all(t == 0 for t in w[len(g):]), (g, w)
    # stop string: the first sequence stops once its text holds the word of its third new token
    tok = hf_tokenizer.load_hf_tokenizer(directory)
    target = tok.decode([got[0][2]])
    stopped = generate.greedy(config, params, prompts[:1], 9, [eos], stop=[target], decode=tok.decode)[0]
    assert target in tok.decode(stopped) and target not in tok.decode(stopped[:-1])
    assert stopped == got[0][:len(stopped)]


def _hf_exact_match(directory, rows):
    """transformers' own greedy exact match: generate from the prompt, the new text (to <eos>) is the answer."""
    m = transformers.AutoModelForCausalLM.from_pretrained(directory)
    # the directory's tokenizer.json as it is (AutoTokenizer would pick e.g. Qwen2's own class)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, "tokenizer.json"))
    out = []
    for prompt, answer in rows:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            new = m.generate(input_ids=ids, max_new_tokens=4, do_sample=False, eos_token_id=2, pad_token_id=0)
        new = new[0, ids.shape[1]:].tolist()
        out.append(float(2 in new and tok.decode(new[:new.index(2)]) == answer))
    return np.asarray(out)


@pytest.mark.parametrize("kind", ["llama-llama3-bias", "mistral-window", "qwen2", "qwen3"])
def test_m2n2_merge_scores_what_transformers_scores(saved, tmp_path, capsys, kind):
    """Two transformers-saved checkpoints merged by the CLI: each input's training score is transformers'
    greedy exact match on the same examples, and the merged directory scores in transformers what the
    project reported."""
    _, first = saved[kind]
    second = str(tmp_path / "second")
    other = hf_model(kind)  # a 'fine-tune' of the first: its weights plus noise
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    other.save_pretrained(second)
    write_tokenizer(second)
    rng = np.random.default_rng(3)
    rows = []
    prompts = rng.integers(3, 16, (300, 4))
    for m in (saved[kind][0], other):  # each model's own greedy answers where it stops
        with torch.no_grad():
            new = m.generate(input_ids=torch.tensor(prompts), max_new_tokens=3,
                             do_sample=False, eos_token_id=2, pad_token_id=0)[:, 4:].tolist()
        stopping = [i for i, n in enumerate(new) if 2 in n[1:]][:8]
        others = [i for i in range(300) if i not in stopping][:4]
        rows += [(" ".join(WORDS[t] for t in prompts[i]), " ".join(WORDS[t] for t in new[i][:new[i].index(2)]))
                 for i in stopping]
        rows += [(" ".join(WORDS[t] for t in prompts[i]), WORDS[int(rng.integers(3, 16))]) for i in others]
    data = tmp_path / "fit.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    code = cli.main(["merge", first, second, "--task", "llm-exact-match", "--task-arg", f"data={data}",
                     "--forward-passes", "12", "--batch", "4", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    for directory, row in zip((first, second), record["models"]):
        want = _hf_exact_match(directory, rows)
        assert want.sum() >= 3  # the comparison is not all zeros
        assert row["train_score"] == pytest.approx(want.mean()), directory
    merged = str(tmp_path / "run" / "merged")
    assert record["merged"]["train_score"] == pytest.approx(_hf_exact_match(merged, rows).mean())
    assert json.loads(open(os.path.join(merged, "config.json")).read()) == json.loads(
        open(os.path.join(first, "config.json")).read())
