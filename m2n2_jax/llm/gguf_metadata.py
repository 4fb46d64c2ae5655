"""GGUF metadata (llama.cpp's keys) for a Hugging Face Llama-family directory.

Hyper-parameters come from config.json (``{arch}.block_count``, ``{arch}.rope.freq_base``,
...); the tokenizer from tokenizer.json, which must be byte-level BPE (llama.cpp's
``gpt2`` tokenizer model): the vocabulary in id order with its added tokens
(special ones as control tokens, the others as user-defined tokens), the merges,
the pre-tokenizer by llama.cpp's name for it, the special-token ids and
add_bos/add_eos from tokenizer_config.json (else config.json and the post-processor)
and the chat template. What the GGUF reader of this project could not read back
the same way (rope scaling, MLP biases, Mistral's sliding window, another tokenizer
model or pre-tokenizer) is refused in one line.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from m2n2_jax.errors import DataError
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.llm.gguf_file import PRE_TOKENIZERS

ARCHES = ("llama", "qwen2", "qwen3")
CONTROL, USER_DEFINED, NORMAL, UNUSED = 3, 4, 1, 5  # llama.cpp's token types


def _types():
    import gguf

    return gguf.GGUFValueType


def hyperparameters(config: LlamaConfig, where: str) -> list[tuple]:
    """[(key, value, type, None)] of the architecture's GGUF keys for ``config``."""
    t = _types()
    arch = config.model_type
    if arch not in ARCHES:
        hint = " (llama.cpp stores Mistral as 'llama' without its sliding window)" if arch == "mistral" else ""
        raise DataError(f"{where}: model_type {arch!r} cannot be written as GGUF{hint}; supported: "
                        f"{', '.join(ARCHES)}. Write a Hugging Face directory instead (leave out --out-format gguf).")
    if config.rope_scaling:
        raise DataError(f"{where}: rope scaling {config.rope.get('rope_type')!r} cannot be written as GGUF "
                        "(only plain rotary embeddings); write a Hugging Face directory instead.")
    if config.mlp_bias:
        raise DataError(f"{where}: mlp_bias true cannot be written as GGUF; write a Hugging Face directory instead.")
    u32, f32 = t.UINT32, t.FLOAT32
    keys = {"context_length": (config.max_position_embeddings, u32),
            "embedding_length": (config.hidden_size, u32), "block_count": (config.num_hidden_layers, u32),
            "feed_forward_length": (config.intermediate_size, u32),
            "attention.head_count": (config.num_attention_heads, u32),
            "attention.head_count_kv": (config.num_key_value_heads, u32),
            "attention.key_length": (config.head_dim, u32), "attention.value_length": (config.head_dim, u32),
            "rope.dimension_count": (config.head_dim, u32), "rope.freq_base": (config.rope_theta, f32),
            "attention.layer_norm_rms_epsilon": (config.rms_norm_eps, f32), "vocab_size": (config.vocab_size, u32)}
    return [(f"{arch}.{key}", value, kind, None) for key, (value, kind) in keys.items()]


def _load_json(directory: str, name: str, required: bool) -> dict:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        if required:
            raise DataError(f"{directory} has no {name}; writing GGUF needs the model's tokenizer "
                            "(a byte-level BPE tokenizer.json).")
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise DataError(f"{path} is not JSON ({err}).") from None


def pre_tokenizer_name(spec: dict | None, where: str) -> str:
    """llama.cpp's tokenizer.ggml.pre for a tokenizer.json pre_tokenizer (the ones the GGUF reader rebuilds)."""
    def byte_level(part, regex):
        return part.get("type") == "ByteLevel" and not part.get("add_prefix_space") and \
            part.get("use_regex", True) == regex

    parts = (spec or {}).get("pretokenizers", [spec] if spec else [])
    if len(parts) == 1 and byte_level(parts[0], True):
        return "gpt2"
    if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and byte_level(parts[1], True):
        return "smollm"
    if len(parts) == 2 and parts[0].get("type") == "Split" and byte_level(parts[1], False) \
            and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert"):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        for name in ("llama-bpe", "qwen2"):
            if PRE_TOKENIZERS[name] == pattern:
                return name
    raise DataError(f"{where}: its pre_tokenizer {json.dumps(spec)[:120]} is not one GGUF out supports "
                    "(byte-level as in GPT-2, SmolLM, Llama 3 or Qwen2); write a Hugging Face directory instead.")


def _token_content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(directory: str, tokenizer_config: dict) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    path = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            template = f.read()
    return template


def _template_adds(post_processor: dict | None, first: bool) -> bool:
    """Whether tokenizer.json's TemplateProcessing puts a special token first (bos) or last (eos)."""
    steps = (post_processor or {}).get("single") if (post_processor or {}).get("type") == "TemplateProcessing" else None
    return bool(steps) and "SpecialToken" in steps[0 if first else -1]


def tokenizer_fields(directory: str, vocab_size: int) -> list[tuple]:
    """[(key, value, type, sub-type)] of llama.cpp's tokenizer.ggml.* keys (and the chat template)."""
    t = _types()
    where = os.path.join(directory, "tokenizer.json")
    spec = _load_json(directory, "tokenizer.json", required=True)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") not in (None, {}):
        raise DataError(f"{where}: a {model.get('type')} tokenizer with normalizer "
                        f"{(spec.get('normalizer') or {}).get('type')} cannot be written as GGUF (only byte-level "
                        "BPE without a normalizer); write a Hugging Face directory instead.")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"), where)
    tokens: dict[int, tuple[str, int]] = {i: (tok, NORMAL) for tok, i in model.get("vocab", {}).items()}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    size = max(vocab_size, max(tokens) + 1)
    listed = [tokens.get(i, (f"[PAD{i}]", UNUSED)) for i in range(size)]  # llama.cpp's filler for unused ids
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    fields = [("tokenizer.ggml.model", "gpt2", t.STRING, None), ("tokenizer.ggml.pre", pre, t.STRING, None),
              ("tokenizer.ggml.tokens", [tok for tok, _ in listed], t.ARRAY, t.STRING),
              ("tokenizer.ggml.token_type", [kind for _, kind in listed], t.ARRAY, t.INT32),
              ("tokenizer.ggml.merges", merges, t.ARRAY, t.STRING)]
    tokenizer_config = _load_json(directory, "tokenizer_config.json", required=False)
    config = _load_json(directory, "config.json", required=False)
    ids = {tok: i for i, (tok, _) in enumerate(listed)}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        token = _token_content(tokenizer_config.get(f"{name}_token"))
        value = ids.get(token) if token is not None else config.get(f"{name}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            fields.append((f"tokenizer.ggml.{key}", int(value), t.UINT32, None))
    post = spec.get("post_processor")
    add_bos = tokenizer_config.get("add_bos_token", _template_adds(post, first=True))
    add_eos = tokenizer_config.get("add_eos_token", _template_adds(post, first=False))
    fields += [("tokenizer.ggml.add_bos_token", bool(add_bos), t.BOOL, None),
               ("tokenizer.ggml.add_eos_token", bool(add_eos), t.BOOL, None)]
    template = _chat_template(directory, tokenizer_config)
    if template:
        fields.append(("tokenizer.chat_template", template, t.STRING, None))
    return fields


def config_difference(described: LlamaConfig, config: LlamaConfig) -> str:
    """'' when two configs describe the same model up to GGUF's float32 storage of floats, else the first
    field that differs, as 'FIELD: A (file) vs B (model)'."""
    for field in dataclasses.fields(LlamaConfig):
        a, b = getattr(described, field.name), getattr(config, field.name)
        if isinstance(a, float) and isinstance(b, float):
            a, b = np.float32(a), np.float32(b)
        if a != b:
            return f"{field.name}: {getattr(described, field.name)} (file) vs {getattr(config, field.name)} (model)"
    return ""


def metadata_from_hf(directory: str, config: LlamaConfig) -> tuple[str, list[tuple]]:
    """(architecture, [(key, value, type, sub-type)]) for the parameters ``config`` describes, with the
    tokenizer and chat template of the Hugging Face directory ``directory``."""
    mismatch = config_difference(LlamaConfig.load(directory), config)
    if mismatch:
        raise DataError(f"{directory}: its config.json does not describe the model being written ({mismatch}); "
                        "pass the directory these parameters came from.")
    t = _types()
    name = os.path.basename(os.path.normpath(directory))
    return config.model_type, ([("general.name", name, t.STRING, None)] + hyperparameters(config, directory)
                               + tokenizer_fields(directory, config.vocab_size))
