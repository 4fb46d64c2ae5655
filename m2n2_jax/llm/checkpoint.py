"""Hugging Face Llama-family checkpoints (config.json + safetensors) in and out; GGUF in.

HF stores ``model.layers.N.self_attn.q_proj.weight`` as [out, in] (PyTorch's
Linear); Flax's Dense kernel is [in, out], so linear weights are transposed on
the way in and out. Single files (model.safetensors) and sharded checkpoints
(model.safetensors.index.json) are read; writing shards above ``max_shard_bytes``.
"""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from m2n2_jax.errors import DataError
from m2n2_jax.llm import gguf_file
from m2n2_jax.llm.config import LlamaConfig, read_config

_LINEAR = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
_NORMS = ("input_layernorm", "post_attention_layernorm")
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some old checkpoints store; recomputed from the config
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _has_bias(config: LlamaConfig, block: str, proj: str) -> bool:
    if block == "mlp":
        return config.mlp_bias
    return config.attention_bias or (config.qkv_bias and proj != "o_proj")


def hf_names(config: LlamaConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (path in the Flax params dict, transposed?)."""
    names = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
             "model.norm.weight": (("norm", "weight"), False)}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), True)
    for i in range(config.num_hidden_layers):
        for block, projections in _LINEAR.items():
            for proj in projections:
                names[f"model.layers.{i}.{block}.{proj}.weight"] = ((f"layers_{i}", block, proj, "kernel"), True)
                if _has_bias(config, block, proj):
                    names[f"model.layers.{i}.{block}.{proj}.bias"] = ((f"layers_{i}", block, proj, "bias"), False)
        for norm in _NORMS:
            names[f"model.layers.{i}.{norm}.weight"] = ((f"layers_{i}", norm, "weight"), False)
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                names[f"model.layers.{i}.self_attn.{norm}.weight"] = ((f"layers_{i}", "self_attn", norm, "weight"), False)
    return names


def iter_hf(config: LlamaConfig, params):
    """(HF name, array in PyTorch layout) of Flax params, one tensor at a time (in hf_names order)."""
    for name, (path, transpose) in hf_names(config).items():
        value = params
        for part in path:
            value = value[part]
        value = np.asarray(value)
        yield name, np.ascontiguousarray(value.T if transpose else value)


def params_to_hf(config: LlamaConfig, params) -> dict[str, np.ndarray]:
    """Flax params -> {HF name: array in PyTorch layout}."""
    return dict(iter_hf(config, params))


def hf_to_params(config: LlamaConfig, tensors: dict[str, np.ndarray], where: str = "the checkpoint") -> dict:
    """{HF name: array} -> Flax params, checking names and shapes; ``where`` names the source in messages."""
    import jax.numpy as jnp

    names = hf_names(config)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataError(f"{where} lacks {len(missing)} tensors, e.g. {missing[0]}; "
                        "does config.json (layers, tie_word_embeddings, attention_bias) match the weights?")
    extra = [n for n in tensors if n not in names and not n.endswith(_IGNORED)
             and not (n == "lm_head.weight" and config.tie_word_embeddings)]
    if extra:
        raise DataError(f"{where} has {len(extra)} tensors that config.json does not describe, e.g. {extra[0]}; "
                        "check attention_bias / mlp_bias / model_type in config.json.")
    for name in names:
        want = expected_shape(config, name)
        if tuple(np.shape(tensors[name])) != want:
            raise DataError(f"{where}: tensor {name} has shape {tuple(np.shape(tensors[name]))}, which does "
                            f"not match config.json (expected {want}).")
    params: dict = {}
    for name, (path, transpose) in names.items():
        value = np.asarray(tensors[name])
        value = value.T if transpose else value
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    return params


def expected_shape(config: LlamaConfig, name: str) -> tuple[int, ...]:
    """The shape (PyTorch layout) that config.json implies for the HF tensor ``name``."""
    c = config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (c.vocab_size, c.hidden_size)
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return (c.head_dim,)
    if name.endswith("norm.weight"):
        return (c.hidden_size,)
    out_in = {"q_proj": (q, c.hidden_size), "k_proj": (kv, c.hidden_size), "v_proj": (kv, c.hidden_size),
              "o_proj": (c.hidden_size, q), "gate_proj": (c.intermediate_size, c.hidden_size),
              "up_proj": (c.intermediate_size, c.hidden_size), "down_proj": (c.hidden_size, c.intermediate_size)}
    shape = out_in[name.split(".")[-2]]
    return shape if name.endswith("weight") else shape[:1]


def weights_dtype(path: str) -> str:
    """'float32', 'bfloat16' or 'float16': the floating dtype a safetensors directory stores (the most common one)."""
    from collections import Counter

    files = [os.path.join(path, "model.safetensors")]
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(files[0]) and os.path.exists(index):
        with open(index) as f:
            files = [os.path.join(path, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    counts: Counter = Counter()
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        counts.update(_SAFETENSORS_DTYPES[v["dtype"]] for k, v in header.items()
                      if k != "__metadata__" and v["dtype"] in _SAFETENSORS_DTYPES)
    return counts.most_common(1)[0][0] if counts else "float32"


def _dtype_name(dtype) -> str:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DataError(f"dtype {dtype!r} is not supported for writing; use one of {', '.join(DTYPES)}.")
        return dtype
    for name, value in DTYPES.items():
        if np.dtype(value) == np.dtype(dtype):
            return name
    raise DataError(f"dtype {dtype} is not supported for writing; use one of {', '.join(DTYPES)}.")


def save(directory: str, config: LlamaConfig, params, dtype=None, max_shard_bytes: int | None = None,
         like: str | None = None) -> list[str]:
    """Write config.json and model.safetensors (or shards plus an index). Returns the files.

    ``like``: the checkpoint (directory or .gguf) these parameters came from. Its config.json is
    kept with only the dtype changed, and its tokenizer, special-token and generation files are
    copied (from a GGUF they are rebuilt from its metadata). ``dtype``: 'float32', 'bfloat16',
    'float16' (or the numpy type); by default the dtype of ``like``'s weights, else float32.
    """
    os.makedirs(directory, exist_ok=True)
    files = []
    if like is not None and like.lower().endswith(".gguf"):
        hf_config, extras = gguf_file.hf_files(like)
        dtype = dtype or "float32"
        for name, content in extras.items():
            with open(os.path.join(directory, name), "w") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
            files.append(name)
    elif like is not None:
        import shutil

        hf_config = read_config(like)
        dtype = dtype or weights_dtype(like)
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(like, name)) and os.path.abspath(like) != os.path.abspath(directory):
                shutil.copy(os.path.join(like, name), os.path.join(directory, name))
                files.append(name)
    else:
        hf_config = config.to_hf()
    name = _dtype_name(dtype or "float32")
    hf_config = dict(hf_config)
    for key in ("dtype", "torch_dtype"):  # transformers 5 writes dtype, 4.x torch_dtype
        if key in hf_config or (key == "dtype" and "torch_dtype" not in hf_config):
            hf_config[key] = name
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    files.insert(0, "config.json")
    tensors = {k: v.astype(DTYPES[name]) for k, v in params_to_hf(config, params).items()}
    return files + _write_tensors(directory, tensors, max_shard_bytes)


def _write_tensors(directory: str, tensors: dict, max_shard_bytes: int | None) -> list[str]:
    metadata = {"format": "pt"}
    total = sum(v.nbytes for v in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata=metadata)
        return ["model.safetensors"]
    shards, current, size = [], {}, 0
    for name, value in tensors.items():
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    weight_map, files = {}, ["model.safetensors.index.json"]
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, filename), metadata=metadata)
        weight_map.update({name: filename for name in shard})
        files.append(filename)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


def _load_file(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise DataError(f"{path}: not a readable safetensors file ({err}).") from None


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(single):
        return _load_file(single)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DataError(f"{index} has no weight_map; is it a safetensors index?")
        tensors = {}
        for filename in sorted(set(weight_map.values())):
            path = os.path.join(directory, filename)
            if not os.path.exists(path):
                raise DataError(f"shard {filename} named in {index} is missing; download all shards.")
            tensors.update(_load_file(path))
        return tensors
    raise DataError(f"no model.safetensors or model.safetensors.index.json in {directory}; "
                    "pass a Hugging Face model directory with safetensors weights.")


def load_config(path: str) -> LlamaConfig:
    """The config of a Hugging Face directory or a .gguf file."""
    if path.lower().endswith(".gguf"):
        return gguf_file.config_of(path)
    return LlamaConfig.load(path)


def save_like(directory: str, params, like: str) -> None:
    """Write ``params`` as a Hugging Face directory with the config, tokenizer files and dtype of ``like``."""
    save(directory, load_config(like), params, like=like)


def load(path: str, dtype=np.float32) -> tuple[LlamaConfig, dict]:
    """(config, Flax params) of a Hugging Face checkpoint directory or a .gguf file, cast to ``dtype``."""
    if path.lower().endswith(".gguf"):
        config = gguf_file.config_of(path)
        tensors = {k: v.astype(dtype) for k, v in gguf_file.read_tensors(path, config).items()}
    else:
        config = LlamaConfig.load(path)
        tensors = {k: np.asarray(v).astype(dtype) for k, v in read_tensors(path).items()}
    return config, hf_to_params(config, tensors, where=path)
