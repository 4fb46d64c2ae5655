"""Hugging Face Llama checkpoints (config.json + safetensors) in and out.

HF stores ``model.layers.N.self_attn.q_proj.weight`` as [out, in] (PyTorch's
Linear); Flax's Dense kernel is [in, out], so linear weights are transposed on
the way in and out. Single files (model.safetensors) and sharded checkpoints
(model.safetensors.index.json) are read; writing shards above ``max_shard_bytes``.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import DataError
from .config import LlamaConfig

_LINEAR = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
_NORMS = ("input_layernorm", "post_attention_layernorm")


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
        for norm in _NORMS:
            names[f"model.layers.{i}.{norm}.weight"] = ((f"layers_{i}", norm, "weight"), False)
    return names


def params_to_hf(config: LlamaConfig, params) -> dict[str, np.ndarray]:
    """Flax params -> {HF name: array in PyTorch layout}."""
    out = {}
    for name, (path, transpose) in hf_names(config).items():
        value = params
        for part in path:
            value = value[part]
        value = np.asarray(value)
        out[name] = np.ascontiguousarray(value.T if transpose else value)
    return out


def hf_to_params(config: LlamaConfig, tensors: dict[str, np.ndarray]) -> dict:
    """{HF name: array} -> Flax params, checking names and shapes."""
    import jax.numpy as jnp

    names = hf_names(config)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}; "
                        "does config.json (layers, tie_word_embeddings) match the weights?")
    params: dict = {}
    for name, (path, transpose) in names.items():
        value = np.asarray(tensors[name])
        value = value.T if transpose else value
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(value)
    expected = _expected_shapes(config)
    for name, (path, _) in names.items():
        node = params
        for part in path:
            node = node[part]
        if tuple(node.shape) != expected[path]:
            raise DataError(f"tensor {name} has shape {tuple(np.asarray(tensors[name]).shape)}, which does not "
                            f"match config.json (expected {expected[path][::-1] if names[name][1] else expected[path]}).")
    return params


def _expected_shapes(config: LlamaConfig) -> dict:
    import jax

    from .model import Llama
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: Llama(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def save(directory: str, config: LlamaConfig, params, dtype=np.float32, max_shard_bytes: int | None = None) -> list[str]:
    """Write config.json and model.safetensors (or shards plus an index). Returns the files."""
    os.makedirs(directory, exist_ok=True)
    config.save(directory)
    tensors = {k: v.astype(dtype) for k, v in params_to_hf(config, params).items()}
    metadata = {"format": "pt"}
    total = sum(v.nbytes for v in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata=metadata)
        return ["config.json", "model.safetensors"]
    shards, current, size = [], {}, 0
    for name, value in tensors.items():
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    weight_map, files = {}, ["config.json", "model.safetensors.index.json"]
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, filename), metadata=metadata)
        weight_map.update({name: filename for name in shard})
        files.append(filename)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
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
            tensors.update(load_file(path))
        return tensors
    raise DataError(f"no model.safetensors or model.safetensors.index.json in {directory}; "
                    "pass a Hugging Face model directory with safetensors weights.")


def load(directory: str, dtype=np.float32) -> tuple[LlamaConfig, dict]:
    """(config, Flax params) of a Hugging Face Llama checkpoint directory."""
    config = LlamaConfig.load(directory)
    tensors = {k: np.asarray(v).astype(dtype) for k, v in read_tensors(directory).items()}
    return config, hf_to_params(config, tensors)
