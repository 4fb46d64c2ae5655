"""GGUF files (llama.cpp's format) in: configuration, dequantized weights and the tokenizer.

The ``gguf`` package reads the file and dequantizes its tensors (F32, F16, BF16,
Q8_0, Q4_0, Q4_1 and the other types it knows). Tensor names are mapped to
Hugging Face names; llama.cpp stores a Llama's q and k projections with the
rows of each head interleaved for its rotary convention, so those are put back
in Hugging Face's half-split order. The byte-level BPE tokenizer in the metadata
(vocabulary, merges, special tokens, pre-tokenizer type) is rebuilt as a
``tokenizers`` tokenizer, written as tokenizer.json next to a merge.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from m2n2_jax.errors import DataError
from m2n2_jax.llm.config import ARCHITECTURES, LlamaConfig

ARCHES = ("llama", "qwen2", "qwen3")
LAYER_TENSORS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
# How text is split before byte-level BPE, by tokenizer.ggml.pre (the split each vocabulary was trained with)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"default": "gpt2", "gpt2": "gpt2", "smollm": "digits+gpt2", "starcoder": "digits+gpt2",
                  "refact": "digits+gpt2", "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT,
                  "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _stamp(path: str) -> tuple | None:
    """What identifies one version of a file (a rewritten file at the same path gets a new stamp)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _reader(path: str):
    return _open(path, _stamp(path))


@functools.lru_cache(maxsize=2)  # parsing the header of a large vocabulary takes seconds: once per file version
def _open(path: str, stamp):
    try:
        import gguf
    except ImportError:
        raise DataError(f"{path} is a GGUF file; reading it needs the gguf package: pip install -e '.[llm]' "
                        "(or pip install gguf).") from None
    if not os.path.isfile(path):
        raise DataError(f"GGUF file {path} does not exist.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, EOFError) as err:  # the reader's complaints about a malformed file
        raise DataError(f"{path}: not a readable GGUF file ({err}).") from None


def fields(path: str) -> dict:
    """The reader's raw metadata fields (types and bytes as stored), keyed by name."""
    return _reader(path).fields


def metadata(path: str) -> dict:
    """Every metadata field of the file (token lists included) as plain Python values."""
    return _metadata(path, _stamp(path))


@functools.lru_cache(maxsize=4)
def _metadata(path: str, stamp) -> dict:
    reader = _open(path, stamp)
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):  # long string lists: decode directly
            out[key] = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        else:
            out[key] = field.contents()
    out["_tensor_names"] = tuple(t.name for t in reader.tensors)
    return out


def hf_config(path: str) -> dict:
    """The config.json (transformers' fields) this GGUF file describes, special token ids included."""
    return config_from_metadata(metadata(path), path)


def config_from_metadata(meta: dict, path: str) -> dict:
    """hf_config of metadata given as a dict (``_tensor_names`` included); ``path`` names it in messages."""
    arch = meta.get("general.architecture")
    if arch not in ARCHES:
        raise DataError(f"{path}: general.architecture {arch!r} is not supported (supported: {', '.join(ARCHES)}).")
    names = set(meta["_tensor_names"])
    if "rope_freqs.weight" in names or f"{arch}.rope.scaling.type" in meta:
        kind = meta.get(f"{arch}.rope.scaling.type", "rope_freqs.weight (llama3 scaling)")
        raise DataError(f"{path}: rope scaling {kind!r} in a GGUF file is not supported; "
                        "merge the Hugging Face checkpoint instead.")

    def need(key):
        if f"{arch}.{key}" not in meta:
            raise DataError(f"{path}: metadata lacks {arch}.{key}; is this a complete {arch} GGUF file?")
        return meta[f"{arch}.{key}"]

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise DataError(f"{path}: {arch}.rope.dimension_count {rope_dim} differs from the head size {head_dim} "
                        "(partial rotary embeddings are not supported).")
    tokens = meta.get("tokenizer.ggml.tokens")
    config = {"architectures": [ARCHITECTURES[arch]], "model_type": arch,
              "vocab_size": int(meta.get(f"{arch}.vocab_size", len(tokens) if tokens else 0)),
              "hidden_size": hidden, "intermediate_size": int(need("feed_forward_length")),
              "num_hidden_layers": int(need("block_count")), "num_attention_heads": heads,
              "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
              "head_dim": head_dim, "hidden_act": "silu",
              "max_position_embeddings": int(meta.get(f"{arch}.context_length", 2048)),
              "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
              "rope_parameters": {"rope_type": "default",
                                  "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0))},
              "tie_word_embeddings": "output.weight" not in names}
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in names, mlp_bias=False)
    for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            config[name] = int(meta[f"tokenizer.ggml.{key}"])
    return config


def config_of(path: str) -> LlamaConfig:
    return LlamaConfig.from_hf(hf_config(path), where=path)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's per-head row interleaving of q / k back to Hugging Face's half-split order."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(path: str, config: LlamaConfig | None = None) -> dict[str, np.ndarray]:
    """{Hugging Face name: float32 array in PyTorch [out, in] layout}, dequantized."""
    from gguf import quants

    config = config or config_of(path)
    reader = _reader(path)
    out = {}
    for tensor in reader.tensors:
        if tensor.name in GLOBAL_TENSORS:
            name = GLOBAL_TENSORS[tensor.name]
        else:
            parts = tensor.name.split(".")  # blk.N.attn_q.weight
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in LAYER_TENSORS:
                raise DataError(f"{path}: tensor {tensor.name} is not part of a {config.model_type} model this "
                                "loader knows.")
            name = f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
        try:
            value = quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise DataError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which the gguf "
                            "package cannot dequantize.") from None
        value = np.asarray(value, np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if config.model_type == "llama" and tensor.name.endswith(("attn_q.weight", "attn_q.bias")):
            value = _unpermute(value, config.num_attention_heads)
        elif config.model_type == "llama" and tensor.name.endswith(("attn_k.weight", "attn_k.bias")):
            value = _unpermute(value, config.num_key_value_heads)
        out[name] = value
    return out


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (the alphabet byte-level BPE vocabularies are written in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tokenizer(path: str):
    """A ``tokenizers.Tokenizer`` rebuilt from the file's byte-level BPE metadata."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    except ImportError:
        raise DataError(f"{path}: rebuilding its tokenizer needs the tokenizers package: pip install -e '.[llm]'.") \
            from None
    meta = metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise DataError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (only byte-level BPE, 'gpt2').")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise DataError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                        f"{', '.join(sorted(PRE_TOKENIZERS))}).")
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta.get("tokenizer.ggml.token_type") or [])
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]
    if split == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif split == "digits+gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]}:0 $A:0", pair=f"{tokens[bos]}:0 $A:0 $B:1", special_tokens=[(tokens[bos], bos)])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3 and set(t) <= spelled]
    if control:
        tokenizer.add_special_tokens(control)
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if user:
        tokenizer.add_tokens(user)
    return tokenizer


def hf_files(path: str) -> tuple[dict, dict]:
    """(config.json, {file name: JSON content}) for a Hugging Face directory of this GGUF model:
    tokenizer.json, tokenizer_config.json (with the chat template) and generation_config.json."""
    import json

    meta = metadata(path)
    config = hf_config(path)
    tokens = meta["tokenizer.ggml.tokens"]
    special = {name: tokens[config[f"{name}_token_id"]] for name in ("bos", "eos", "pad")
               if config.get(f"{name}_token_id") is not None}
    if meta.get("tokenizer.ggml.unknown_token_id") is not None:
        special["unk"] = tokens[meta["tokenizer.ggml.unknown_token_id"]]
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                        **{f"{k}_token": v for k, v in special.items()},
                        "model_max_length": config["max_position_embeddings"]}
    if meta.get("tokenizer.chat_template"):
        tokenizer_config["chat_template"] = meta["tokenizer.chat_template"]
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    return config, {"tokenizer.json": json.loads(build_tokenizer(path).to_str()),
                    "tokenizer_config.json": tokenizer_config, "generation_config.json": generation}
