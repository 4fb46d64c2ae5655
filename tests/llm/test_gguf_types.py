"""GGUF tensor types in: a tiny Llama written with the gguf package's writer in F32, F16, BF16, Q8_0, Q4_0
and Q4_1 (llama.cpp's q/k row order), loaded by the project and by transformers' GGUF loader."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from m2n2_jax.llm import checkpoint, model  # noqa: E402

HIDDEN, INTER, VOCAB, HEADS, KV, LAYERS = 64, 128, 96, 4, 2, 2


def _permute(w, heads):  # Hugging Face's half-split rows -> llama.cpp's interleaved rows
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, qtype):
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([chr(ord("a") + i % 26) * (1 + i // 26) for i in range(VOCAB)])
    writer.add_token_types([1] * VOCAB)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    hd = HIDDEN // HEADS
    tensors = {"token_embd.weight": (VOCAB, HIDDEN), "output.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        tensors.update({f"blk.{i}.attn_q.weight": (HEADS * hd, HIDDEN), f"blk.{i}.attn_k.weight": (KV * hd, HIDDEN),
                        f"blk.{i}.attn_v.weight": (KV * hd, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
                        f"blk.{i}.ffn_gate.weight": (INTER, HIDDEN), f"blk.{i}.ffn_up.weight": (INTER, HIDDEN),
                        f"blk.{i}.ffn_down.weight": (HIDDEN, INTER), f"blk.{i}.attn_norm.weight": (HIDDEN,),
                        f"blk.{i}.ffn_norm.weight": (HIDDEN,)})
    for name, shape in tensors.items():
        w = (1 + 0.1 * rng.normal(size=shape) if len(shape) == 1 else 0.3 * rng.normal(size=shape)).astype(np.float32)
        if name.endswith("attn_q.weight"):
            w = _permute(w, HEADS)
        elif name.endswith("attn_k.weight"):
            w = _permute(w, KV)
        kind = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else qtype
        data = w if kind == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(w, kind)
        if kind == gguf.GGMLQuantizationType.F16:
            data = w.astype(np.float16)
        writer.add_tensor(name, data, raw_dtype=None if kind in (gguf.GGMLQuantizationType.F32,
                                                                 gguf.GGMLQuantizationType.F16) else kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_tensor_types_match_transformers_gguf_loader(tmp_path, qtype):
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_tiny_gguf(path, getattr(gguf.GGMLQuantizationType, qtype))
    config, params = checkpoint.load(str(path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ours = checkpoint.params_to_hf(config, params)
    for name, value in hf.state_dict().items():
        np.testing.assert_array_equal(ours[name], value.numpy(), err_msg=name)
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 12))
    with torch.no_grad():
        want = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.forward(config, params, jnp.asarray(tokens))), want, atol=1e-4, rtol=0)
