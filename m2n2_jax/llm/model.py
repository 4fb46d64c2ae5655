"""A Flax (linen) Llama: RMSNorm, rotary embeddings with rope_theta, SwiGLU MLP,
grouped-query attention, tied or untied embeddings.

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

from .config import LlamaConfig

_INIT = nn.initializers.normal(0.02)


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight * x32.astype(x.dtype)


def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin [..., T, head_dim] for integer positions [..., T]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate x [B, T, H, hd] by the tables [B, T, hd] (half-split convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _dense(features: int, name: str):
    return nn.Dense(features, use_bias=False, kernel_init=_INIT, name=name)


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        c = self.config
        batch, length, _ = x.shape
        q = _dense(c.num_attention_heads * c.head_dim, "q_proj")(x).reshape(batch, length, c.num_attention_heads, c.head_dim)
        k = _dense(c.num_key_value_heads * c.head_dim, "k_proj")(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        v = _dense(c.num_key_value_heads * c.head_dim, "v_proj")(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        groups = c.num_attention_heads // c.num_key_value_heads
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # head h reads kv head h // groups
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(c.head_dim))
        logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
        return _dense(c.hidden_size, "o_proj")(out)


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = _dense(c.intermediate_size, "gate_proj")(x)
        up = _dense(c.intermediate_size, "up_proj")(x)
        return _dense(c.hidden_size, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        c = self.config
        x = x + Attention(c, name="self_attn")(RMSNorm(c.rms_norm_eps, name="input_layernorm")(x), cos, sin, mask)
        return x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x))


class Llama(nn.Module):
    """Causal LM: tokens [B, T] -> logits [B, T, V].

    ``attention_mask`` [B, T] (1 = real token) hides padding keys; positions
    default to 0..T-1.
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens, attention_mask=None, positions=None):
        c = self.config
        batch, length = tokens.shape
        embed = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=_INIT, name="embed_tokens")
        x = embed(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
        mask = jnp.tril(jnp.ones((length, length), bool))[None]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, :]
        for i in range(c.num_hidden_layers):
            x = DecoderLayer(c, name=f"layers_{i}")(x, cos, sin, mask)
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        if c.tie_word_embeddings:
            return embed.attend(x)
        return _dense(c.vocab_size, "lm_head")(x)


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


def apply(config: LlamaConfig, params, tokens, attention_mask=None, positions=None):
    """Logits [B, T, V] of the model with ``params`` (the inner 'params' dict)."""
    return Llama(config).apply({"params": params}, tokens, attention_mask, positions)


forward = jax.jit(apply, static_argnums=0)
forward.__doc__ = "Jitted :func:`apply` (config is static)."


def num_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
