"""A Flax (linen) Llama-family model: RMSNorm, rotary embeddings (rope_theta, linear
or llama3 scaling), SwiGLU MLP, grouped-query attention, tied or untied embeddings,
optional biases (Llama's attention_bias / mlp_bias, Qwen2's q/k/v biases), per-head
q/k norms (Qwen3), a sliding window (Mistral), and a key/value cache for decoding.

Parameter names follow Hugging Face's module names (``embed_tokens``,
``layers_N/self_attn/q_proj``, ...) so that the checkpoint mapping is a rename
plus a transpose of each kernel. The rotary embedding uses HF's half-split
("rotate_half") convention, so HF q/k weights load without permutation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax
import flax.linen as nn

from m2n2_jax.llm.config import LlamaConfig

_INIT = nn.initializers.normal(0.02)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight * x32.astype(x.dtype)


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """Rotary inverse frequencies [head_dim / 2], with the config's rope scaling (as transformers computes them)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    inv_freq = inv_freq.astype(np.float32)
    rope = config.rope
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / np.float32(rope["factor"])
    elif kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(positions, head_dim: int, theta: float | None = None, inv_freq=None):
    """cos, sin [..., T, head_dim] for integer positions [..., T] (plain rope with ``theta``, or ``inv_freq``)."""
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate x [B, T, H, hd] by the tables [B, T, hd] (half-split convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _dense(features: int, name: str, bias: bool = False):
    return nn.Dense(features, use_bias=bias, kernel_init=_INIT, name=name)


class Attention(nn.Module):
    """Grouped-query attention; with ``cache`` = (k, v) [B, S, kv heads, hd] it writes this call's
    keys and values at slots index .. index + T - 1 and attends over all S slots (``mask`` [B, T, S])."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, index=0):
        c = self.config
        batch, length, _ = x.shape
        qkv_bias = c.attention_bias or c.qkv_bias
        q = _dense(c.num_attention_heads * c.head_dim, "q_proj", qkv_bias)(x).reshape(batch, length, c.num_attention_heads, c.head_dim)
        k = _dense(c.num_key_value_heads * c.head_dim, "k_proj", qkv_bias)(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        v = _dense(c.num_key_value_heads * c.head_dim, "v_proj", qkv_bias)(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q, k = RMSNorm(c.rms_norm_eps, name="q_norm")(q), RMSNorm(c.rms_norm_eps, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
            cache = (k, v)
        groups = c.num_attention_heads // c.num_key_value_heads
        keys, values = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # head h reads kv head h // groups
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, keys).astype(jnp.float32) / jnp.sqrt(jnp.float32(c.head_dim))
        logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, values).reshape(batch, length, -1)
        return _dense(c.hidden_size, "o_proj", c.attention_bias)(out), cache


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = _dense(c.intermediate_size, "gate_proj", c.mlp_bias)(x)
        up = _dense(c.intermediate_size, "up_proj", c.mlp_bias)(x)
        return _dense(c.hidden_size, "down_proj", c.mlp_bias)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, index=0):
        c = self.config
        h, cache = Attention(c, name="self_attn")(RMSNorm(c.rms_norm_eps, name="input_layernorm")(x), cos, sin, mask,
                                                  cache, index)
        x = x + h
        return x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x)), cache


def causal_mask(config: LlamaConfig, query_slots, key_slots, key_valid=None):
    """[B or 1, T, S]: causal over slots, padding keys hidden, and the sliding window (Mistral) if any."""
    mask = key_slots[None, None, :] <= query_slots[None, :, None]
    if config.sliding_window is not None:
        mask = mask & (query_slots[None, :, None] - key_slots[None, None, :] < config.sliding_window)
    if key_valid is not None:
        mask = mask & key_valid.astype(bool)[:, None, :]
    return mask


class Llama(nn.Module):
    """Causal LM: tokens [B, T] -> logits [B, T, V].

    ``attention_mask`` [B, T] (1 = real token) hides padding keys; positions
    default to 0..T-1. With ``cache`` (a list of per-layer (k, v) [B, S, kv heads, hd])
    the tokens fill slots index .. index + T - 1, ``attention_mask`` covers all S slots,
    and the call returns (logits, new cache). ``last_only`` keeps the last position's
    logits [B, 1, V] (a prefill needs no others; the head over every prompt position
    costs a fifth of the FLOPs and a [B, T, V] float array).
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens, attention_mask=None, positions=None, cache=None, index=0, last_only: bool = False):
        c = self.config
        batch, length = tokens.shape
        embed = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=_INIT, name="embed_tokens")
        x = embed(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        cos, sin = rope_tables(positions, c.head_dim, inv_freq=inverse_frequencies(c))
        query_slots = index + jnp.arange(length)
        key_slots = jnp.arange(length if cache is None else cache[0][0].shape[1])
        mask = causal_mask(c, query_slots, key_slots, attention_mask)
        new_cache = []
        for i in range(c.num_hidden_layers):
            x, layer_cache = DecoderLayer(c, name=f"layers_{i}")(x, cos, sin, mask,
                                                                 None if cache is None else cache[i], index)
            new_cache.append(layer_cache)
        if last_only:
            x = x[:, -1:]
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        logits = embed.attend(x) if c.tie_word_embeddings else _dense(c.vocab_size, "lm_head")(x)
        return logits if cache is None else (logits, new_cache)


def init_params(config: LlamaConfig, seed: int = 0) -> dict:
    """Random parameters (normal, std 0.02; norms at 1) as a plain nested dict.

    Drawn with numpy from the shapes Flax reports, which avoids compiling
    Flax's initialisers (slow on a busy CPU).
    """
    shapes = jax.eval_shape(lambda: Llama(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "weight":  # RMSNorm scales
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype)

    return flax.core.unfreeze(jax.tree_util.tree_map_with_path(draw, shapes["params"]))


def apply(config: LlamaConfig, params, tokens, attention_mask=None, positions=None, cache=None, index=0,
          last_only: bool = False):
    """Logits [B, T, V] of the model with ``params`` (the inner 'params' dict); (logits, cache) with a cache;
    [B, 1, V] with ``last_only``."""
    return Llama(config).apply({"params": params}, tokens, attention_mask, positions, cache, index, last_only)


forward = jax.jit(apply, static_argnums=0)
forward.__doc__ = "Jitted :func:`apply` (config is static)."


def num_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
