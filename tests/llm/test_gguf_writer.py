"""GGUF out (m2n2_jax.llm.gguf_writer): a tiny random Llama written as F32, F16, BF16, Q8_0, Q4_0 and Q4_1.

Judged by the gguf package's reader (names, shapes, types, metadata), by the project's GGUF loader
against a plain numpy reference of each type (equal to the bit), and by transformers' GGUF loader (logits within 1e-4 of the project's, which
also checks that the llama q/k permutation is the one transformers undoes). Metadata and tokenizer
come from an input GGUF (every field copied) or a Hugging Face directory (built from config.json and
a byte-level BPE tokenizer.json, which must tokenize as before).
"""
import dataclasses
import json
import os
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from m2n2_jax import cli  # noqa: E402
from m2n2_jax.errors import DataError  # noqa: E402
from m2n2_jax.llm import checkpoint, gguf_file, gguf_writer, model  # noqa: E402
from m2n2_jax.llm.config import LlamaConfig  # noqa: E402
from test_gguf_types import write_tiny_gguf  # noqa: E402  (a GGUF written by the gguf package alone)

T = gguf.GGMLQuantizationType
TEXT = ["The cat sat on the mat.", "Numbers like 12345 and 2025 are split into digits.", "Hello, world! héllo ünïcode",
        "def add(a, b):\n    return a + b\n", "<|im_start|>user\nWhat is 2+3?<|im_end|>"] * 4
SAMPLES = ["The mat sat on the cat, 987 times.", "héllo world!\n  indented", "<|im_start|>assistant\nfive<|im_end|>"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _trained_tokenizer():
    """A byte-level BPE tokenizer with SmolLM2's pre-tokenizer (digits split, then GPT-2's byte level)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _random_params(config, seed):
    """The project's random init scaled to std 0.4 (norms around 1), so that logits are far from zero."""
    import jax

    def scale(path, x):
        return x * (1 + 0.1 * np.random.default_rng(seed).normal(size=x.shape)) if path[-1].key == "weight" else 20 * x

    return jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(scale(p, np.asarray(x)), np.float32),
                                            model.init_params(config, seed))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Llama as a Hugging Face directory with a trained tokenizer, 3 unused embedding rows and a chat template."""
    root = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tok = _trained_tokenizer()
    config = LlamaConfig(vocab_size=tok.get_vocab_size() + 3, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=50000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=128)
    checkpoint.save(str(root), config, _random_params(config, 0))
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "add_bos_token": False, "chat_template": CHAT}))
    return str(root), tok


def _logits(config, params, tokens):
    return np.asarray(model.forward(config, params, jnp.asarray(tokens)))


def _transformers_logits(path, tokens):
    m = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                          dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor(tokens)).logits.numpy()


def q8_0_reference(w):
    """ggml's Q8_0 in plain numpy: blocks of 32, scale max|x| / 127 stored as float16, round half away from 0."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    x = blocks * _inverse(d)
    q = (np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))).astype(np.int8)
    return (q.astype(np.float32) * _f16(d)).reshape(w.shape)


def _f16(x):
    return x.astype(np.float16).astype(np.float32)


def _inverse(d):
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def q4_0_reference(w):
    """ggml's Q4_0: scale = the block's value of largest magnitude / -8; q = min(15, floor(x / scale + 8.5))."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    d = extreme / np.float32(-8)
    q = np.minimum(15, np.floor(blocks * _inverse(d) + np.float32(8.5)))
    return ((q - 8) * _f16(d)).reshape(w.shape)


def q4_1_reference(w):
    """ggml's Q4_1: scale = (max - min) / 15, offset min; q = min(15, floor((x - min) / scale + 0.5))."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    d = (high - low) / np.float32(15)
    q = np.minimum(15, np.floor((blocks - low) * _inverse(d) + np.float32(0.5)))
    return (q * _f16(d) + _f16(low)).reshape(w.shape)


REFERENCES = {"f32": lambda w: w, "f16": _f16, "bf16": lambda w: w.astype(ml_dtypes.bfloat16).astype(np.float32),
              "q8_0": q8_0_reference, "q4_0": q4_0_reference, "q4_1": q4_1_reference}


@pytest.mark.parametrize("kind", gguf_writer.TYPES)
def test_gguf_in_gguf_out_every_type(tmp_path, kind):
    source = tmp_path / "in.gguf"
    write_tiny_gguf(source, T.F32)
    config, params = checkpoint.load(str(source))
    params = _random_params(config, 1)  # a 'merge': new values in the same shape
    out = gguf_writer.save_gguf(str(tmp_path / f"out-{kind}.gguf"), config, params, like=str(source), out_type=kind)
    assert not os.path.exists(out + ".part")

    reader, original = gguf.GGUFReader(out), gguf.GGUFReader(str(source))
    assert {t.name: list(t.shape) for t in reader.tensors} == {t.name: list(t.shape) for t in original.tensors}
    for t in reader.tensors:
        assert t.tensor_type == (T.F32 if len(t.shape) == 1 else getattr(T, kind.upper())), t.name
    assert reader.fields["general.file_type"].contents() == gguf_writer.file_type(kind)
    for key, field in original.fields.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert reader.fields[key].contents() == field.contents(), key
            assert reader.fields[key].types == field.types, key

    back_config, back = checkpoint.load(out)
    assert back_config == config
    written, read = checkpoint.params_to_hf(config, params), checkpoint.params_to_hf(config, back)
    for name, want in written.items():
        np.testing.assert_array_equal(read[name], want if want.ndim == 1 else REFERENCES[kind](want), err_msg=name)

    tokens = np.random.default_rng(2).integers(0, config.vocab_size, (2, 12))
    theirs = _transformers_logits(out, tokens)
    np.testing.assert_allclose(_logits(config, back, tokens), theirs, atol=1e-4, rtol=0)
    if kind == "f32":  # the merge itself, not only what was read back
        np.testing.assert_allclose(_logits(config, params, tokens), theirs, atol=1e-4, rtol=0)


def test_permutation_is_llama_cpps_and_undone_by_the_reader():
    """llama.cpp interleaves each head's two halves of rows: head h, row r of the first half goes to 2r."""
    heads, half = 2, 3
    w = np.arange(heads * 2 * half * 5, dtype=np.float32).reshape(heads * 2 * half, 5)
    got = gguf_writer.permute(w, heads)
    for h in range(heads):
        for r in range(half):
            base = h * 2 * half
            np.testing.assert_array_equal(got[base + 2 * r], w[base + r])
            np.testing.assert_array_equal(got[base + 2 * r + 1], w[base + half + r])
    np.testing.assert_array_equal(gguf_file._unpermute(got, heads), w)


def test_hf_directory_to_gguf_keeps_weights_tokenizer_and_template(hf_dir, tmp_path):
    directory, tok = hf_dir
    config, params = checkpoint.load(directory)
    out = gguf_writer.save_gguf(str(tmp_path / "tiny.gguf"), config, params, like=directory)
    meta = gguf_file.metadata(out)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == CHAT and meta["tokenizer.ggml.add_bos_token"] is False
    ids = tok.get_vocab()
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.padding_token_id"]) == (ids["<|im_start|>"], ids["<|im_end|>"], ids["<|endoftext|>"])
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config.vocab_size and tokens[-1] == f"[PAD{config.vocab_size - 1}]"
    assert [tokens[ids[s]] for s in SPECIALS] == SPECIALS
    assert [meta["tokenizer.ggml.token_type"][ids[s]] for s in SPECIALS] == [3, 3, 3]

    back_config, back = checkpoint.load(out)
    assert back_config == dataclasses.replace(config, rms_norm_eps=float(np.float32(1e-5)))  # GGUF stores float32
    for name, value in checkpoint.params_to_hf(config, params).items():
        np.testing.assert_array_equal(checkpoint.params_to_hf(config, back)[name], value, err_msg=name)
    rebuilt = gguf_file.build_tokenizer(out)  # the project's reader, as llama.cpp's conventions say
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    for sample in SAMPLES:
        assert rebuilt.encode(sample).ids == tok.encode(sample).ids, sample
        assert hf_tok(sample)["input_ids"] == tok.encode(sample).ids, sample

    sample_ids = np.asarray([tok.encode(SAMPLES[0]).ids])
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        want = hf_model(torch.tensor(sample_ids)).logits.numpy()
    np.testing.assert_allclose(_transformers_logits(out, sample_ids), want, atol=1e-4, rtol=0)

    again = gguf_writer.save_gguf(str(tmp_path / "again.gguf"), config, back, like=out, out_type="q8_0")
    first, second = gguf_file.fields(out), gguf_file.fields(again)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.chat_template"):
        assert [bytes(first[key].parts[i]) for i in first[key].data] == \
            [bytes(second[key].parts[i]) for i in second[key].data], key


def test_refusals_are_one_line(hf_dir, tmp_path):
    directory, _ = hf_dir
    config, params = checkpoint.load(directory)
    with pytest.raises(Exception, match="not supported for writing; use one of f32"):
        gguf_writer.save_gguf(str(tmp_path / "x.gguf"), config, params, like=directory, out_type="q2_k")
    other = LlamaConfig(**{**config.__dict__, "num_hidden_layers": 1})
    with pytest.raises(DataError, match="pass the directory these parameters came from"):
        gguf_writer.save_gguf(str(tmp_path / "x.gguf"), other, params, like=directory)
    bad = tmp_path / "wordlevel"
    checkpoint.save(str(bad), config, params)
    word = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    word.save(str(bad / "tokenizer.json"))
    with pytest.raises(DataError, match="only byte-level BPE"):
        gguf_writer.save_gguf(str(tmp_path / "x.gguf"), config, params, like=str(bad))
    mistral = tmp_path / "mistral"
    checkpoint.save(str(mistral), LlamaConfig(**{**config.__dict__, "model_type": "mistral", "sliding_window": 8}),
                    params)
    with pytest.raises(DataError, match="model_type 'mistral' cannot be written as GGUF"):
        gguf_writer.metadata_for(str(mistral), checkpoint.load_config(str(mistral)))
    qwen3 = tmp_path / "qwen3"  # Qwen3 with attention biases: llama.cpp's GGUF has no key the reader takes it from
    biased = LlamaConfig(**{**config.__dict__, "model_type": "qwen3", "qk_norm": True, "attention_bias": True})
    checkpoint.save(str(qwen3), biased, model.init_params(biased))
    shutil.copy(os.path.join(directory, "tokenizer.json"), qwen3 / "tokenizer.json")
    with pytest.raises(DataError, match="attention_bias: False .file. vs True .model."):
        gguf_writer.save_gguf(str(tmp_path / "x.gguf"), biased, model.init_params(biased), like=str(qwen3))
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def test_cli_merge_writes_gguf(hf_dir, tmp_path, capsys):
    """m2n2 merge of a GGUF file and a Hugging Face directory's twin, written as Q8_0 GGUF; bad formats refused
    before any work."""
    directory, tok = hf_dir
    config, params = checkpoint.load(directory)
    first = gguf_writer.save_gguf(str(tmp_path / "first.gguf"), config, params, like=directory)
    second = gguf_writer.save_gguf(str(tmp_path / "second.gguf"), config, _random_params(config, 5), like=directory)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": " mat"}) + "\n" for p in ("The cat sat on the",
                                                                                        "Hello, the")))
    common = ["merge", first, second, "--task", "llm-exact-match", "--task-arg", f"data={data}", "--quiet",
              "--forward-passes", "2", "--no-checkpoint"]
    assert cli.main(common + ["--out", str(tmp_path / "run"), "--out-format", "gguf", "--gguf-type", "q8_0"]) == 0, \
        capsys.readouterr().err
    merged = tmp_path / "run" / "merged.gguf"
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["merged"]["path"] == str(merged)
    assert {t.tensor_type for t in gguf.GGUFReader(str(merged)).tensors} == {T.F32, T.Q8_0}
    assert gguf_file.metadata(str(merged))["tokenizer.chat_template"] == CHAT
    capsys.readouterr()
    assert cli.main(common + ["--out", str(tmp_path / "bad"), "--gguf-type", "q8_0"]) == 2
    assert "add --out-format gguf" in capsys.readouterr().err
    npy = [str(tmp_path / f"m{i}.npy") for i in range(2)]
    for p in npy:
        np.save(p, np.zeros(3, np.float32))
    assert cli.main(["merge", *npy, "--task", "digits", "--out", str(tmp_path / "d"), "--out-format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "for language models" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_directories_to_gguf_keep_their_row_order(hf_dir, tmp_path, family):
    """Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms) are written without the llama permutation, as
    llama.cpp's converter writes them; transformers reads them back to the directory's logits."""
    directory, tok = hf_dir
    base = checkpoint.load_config(directory)
    # head_dim 128 for Qwen3: transformers' GGUF loader ignores qwen3.attention.key_length and takes
    # Qwen3Config's default, 128 (the project's reader and llama.cpp use the key)
    config = LlamaConfig(**{**base.__dict__, "model_type": family, "qkv_bias": family == "qwen2",
                            "qk_norm": family == "qwen3", "head_dim": 128 if family == "qwen3" else base.head_dim})
    source = tmp_path / family
    checkpoint.save(str(source), config, _random_params(config, 3))
    shutil.copy(os.path.join(directory, "tokenizer.json"), source / "tokenizer.json")
    config, params = checkpoint.load(str(source))
    out = gguf_writer.save_gguf(str(tmp_path / f"{family}.gguf"), config, params, like=str(source))
    assert gguf_file.metadata(out)["general.architecture"] == family
    ids = np.asarray([tok.encode(SAMPLES[0]).ids])
    with torch.no_grad():
        want = transformers.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)(
            torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(_transformers_logits(out, ids), want, atol=1e-4, rtol=0)
    back = checkpoint.params_to_hf(config, checkpoint.load(out)[1])
    for name, value in checkpoint.params_to_hf(config, params).items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_reader_sees_a_file_rewritten_at_the_same_path(hf_dir, tmp_path):
    """The GGUF reader's cache is per file version: a merge written over an earlier file is read anew."""
    path = tmp_path / "model.gguf"
    write_tiny_gguf(path, T.F32)
    assert gguf_file.config_of(str(path)).vocab_size == 96
    directory, _ = hf_dir
    config, params = checkpoint.load(directory)
    gguf_writer.save_gguf(str(path), config, params, like=directory)
    assert gguf_file.config_of(str(path)).vocab_size == config.vocab_size
    assert gguf_file.metadata(str(path))["tokenizer.chat_template"] == CHAT
