"""A Flax (linen) Llama-family model: RMSNorm, rotary embeddings (rope_theta, linear
or llama3 scaling), SwiGLU MLP, grouped-query attention, tied or untied embeddings,
optional biases (Llama's attention_bias / mlp_bias, Qwen2's q/k/v biases), per-head
q/k norms (Qwen3), a sliding window (Mistral), and a key/value cache for decoding.

Parameter names follow Hugging Face's module names (``embed_tokens``,
``layers_N/self_attn/q_proj``, ...) so that the checkpoint mapping is a rename
plus a transpose of each kernel. The rotary embedding uses HF's half-split
("rotate_half") convention, so HF q/k weights load without permutation.
:func:`checkpoint_order` lists the parameters in the checkpoint's own depth order,
the order the merge's flat vector (and a crossover's split point) follows.

Matmul precision (``matmul``): "float32", or "bfloat16" for bfloat16 operands with
float32 accumulation and float32 results (``preferred_element_type``), the form
that reaches AMX / AVX512-BF16 on Intel CPUs and tensor cores on GPUs; norms,
softmax and the residual stream stay float32. :func:`resolve_matmul` turns "auto"
into the faster one for the backend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax
import flax.linen as nn

from m2n2_jax.llm.config import LlamaConfig

_INIT = nn.initializers.normal(0.02)
MATMULS = ("float32", "bfloat16")
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_fast_bf16() -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 or AVX512-BF16 (bfloat16 dot products in hardware)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_matmul(matmul: str = "auto") -> str:
    """"auto" -> "bfloat16" where bfloat16 operands run faster (a GPU or TPU, or a CPU with AMX-BF16 /
    AVX512-BF16), else "float32" (on other CPUs the conversion only adds work); other names are checked."""
    from m2n2_jax.errors import ConfigError

    if matmul == "auto":
        fast = jax.default_backend() in ("gpu", "tpu") or cpu_has_fast_bf16()
        return "bfloat16" if fast else "float32"
    if matmul not in MATMULS:
        raise ConfigError(f"matmul precision {matmul!r} is unknown; choose auto, float32 or bfloat16.")
    return matmul


def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """dot_general on bfloat16 operands accumulated and returned in float32 (for nn.Dense)."""
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                               preferred_element_type=jnp.float32)


def matmul_einsum(matmul: str, spec: str, a, b):
    """einsum in the given matmul precision (bfloat16: bfloat16 operands, float32 result)."""
    if matmul == "bfloat16":
        return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return jnp.einsum(spec, a, b)


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


def _dense(features: int, name: str, bias: bool = False, matmul: str = "float32"):
    return nn.Dense(features, use_bias=bias, kernel_init=_INIT, name=name,
                    dot_general=_bf16_dot_general if matmul == "bfloat16" else None)


class Attention(nn.Module):
    """Grouped-query attention; with ``cache`` = (k, v) [B, S, kv heads, hd] it writes this call's
    keys and values at slots index .. index + T - 1 and attends over all S slots (``mask`` [B, T, S])."""

    config: LlamaConfig
    matmul: str = "float32"

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, index=0):
        c, m = self.config, self.matmul
        batch, length, _ = x.shape
        qkv_bias = c.attention_bias or c.qkv_bias
        q = _dense(c.num_attention_heads * c.head_dim, "q_proj", qkv_bias, m)(x).reshape(batch, length, c.num_attention_heads, c.head_dim)
        k = _dense(c.num_key_value_heads * c.head_dim, "k_proj", qkv_bias, m)(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        v = _dense(c.num_key_value_heads * c.head_dim, "v_proj", qkv_bias, m)(x).reshape(batch, length, c.num_key_value_heads, c.head_dim)
        if c.qk_norm:
            q, k = RMSNorm(c.rms_norm_eps, name="q_norm")(q), RMSNorm(c.rms_norm_eps, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
            cache = (k, v)
        groups = c.num_attention_heads // c.num_key_value_heads
        keys, values = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # head h reads kv head h // groups
        logits = matmul_einsum(m, "bqhd,bkhd->bhqk", q, keys).astype(jnp.float32) / jnp.sqrt(jnp.float32(c.head_dim))
        logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        out = matmul_einsum(m, "bhqk,bkhd->bqhd", weights, values).astype(x.dtype).reshape(batch, length, -1)
        return _dense(c.hidden_size, "o_proj", c.attention_bias, m)(out), cache


class MLP(nn.Module):
    config: LlamaConfig
    matmul: str = "float32"

    @nn.compact
    def __call__(self, x):
        c, m = self.config, self.matmul
        gate = _dense(c.intermediate_size, "gate_proj", c.mlp_bias, m)(x)
        up = _dense(c.intermediate_size, "up_proj", c.mlp_bias, m)(x)
        return _dense(c.hidden_size, "down_proj", c.mlp_bias, m)(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: LlamaConfig
    matmul: str = "float32"

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, index=0):
        c = self.config
        h, cache = Attention(c, self.matmul, name="self_attn")(RMSNorm(c.rms_norm_eps, name="input_layernorm")(x),
                                                               cos, sin, mask, cache, index)
        x = x + h
        return x + MLP(c, self.matmul, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x)), cache


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
    costs a fifth of the FLOPs and a [B, T, V] float array). ``gather`` [B, A] keeps the
    logits [B, A, V] at those positions only (the positions whose prediction is scored).
    """

    config: LlamaConfig
    matmul: str = "float32"

    @nn.compact
    def __call__(self, tokens, attention_mask=None, positions=None, cache=None, index=0, last_only: bool = False,
                 gather=None):
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
            x, layer_cache = DecoderLayer(c, self.matmul, name=f"layers_{i}")(x, cos, sin, mask,
                                                                              None if cache is None else cache[i], index)
            new_cache.append(layer_cache)
        if last_only:
            x = x[:, -1:]
        if gather is not None:
            x = jnp.take_along_axis(x, gather[..., None], axis=1)
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        if c.tie_word_embeddings:
            logits = matmul_einsum(self.matmul, "bth,vh->btv", x, embed.embedding)
        else:
            logits = _dense(c.vocab_size, "lm_head", False, self.matmul)(x)
        return logits if cache is None else (logits, new_cache)


def broadcast_cache(cache, batch: int, slots_after: int):
    """A [1, P, ...] cache per layer (a shared prefix's) as [batch, P + slots_after, ...], zeros after P."""
    pad = ((0, 0), (0, slots_after), (0, 0), (0, 0))
    return [tuple(jnp.pad(jnp.broadcast_to(c, (batch,) + c.shape[1:]), pad) for c in kv) for kv in cache]


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
          last_only: bool = False, gather=None, matmul: str = "float32"):
    """Logits [B, T, V] of the model with ``params`` (the inner 'params' dict); (logits, cache) with a cache;
    [B, 1, V] with ``last_only``; [B, A, V] at the positions ``gather`` [B, A]. ``matmul``: "float32" or
    "bfloat16" (bfloat16 operands, float32 accumulation)."""
    return Llama(config, matmul).apply({"params": params}, tokens, attention_mask, positions, cache, index,
                                       last_only, gather)


forward = jax.jit(apply, static_argnums=0, static_argnames=("last_only", "matmul"))
forward.__doc__ = "Jitted :func:`apply` (config, last_only and matmul are static)."

# Hugging Face's state-dict order: module registration order in transformers' Llama-family classes.
_TOP_ORDER = ("embed_tokens", "layers", "norm", "lm_head")
_LAYER_ORDER = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
_BLOCK_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "gate_proj", "up_proj", "down_proj")
_LEAF_ORDER = ("embedding", "kernel", "weight", "bias")


def _rank(name: str, known: tuple) -> tuple:
    base, _, number = name.rpartition("_")
    if base in known and number.isdigit():  # layers_12
        return (known.index(base), int(number), "")
    return (known.index(name), 0, "") if name in known else (len(known), 0, name)


def checkpoint_order(params) -> tuple[int, ...]:
    """Leaf indices of ``jax.tree.flatten(params)`` in the checkpoint's own depth order: the embedding,
    layer 0 .. N-1 (each as Hugging Face's state dict lists it: attention q, k, v, o, its q/k norms, then
    the MLP's gate, up, down, then the two layer norms), the final norm, the LM head. Names this model does
    not have come last in each module, alphabetically. For :class:`~m2n2_jax.algorithm.flatten.VectorLayout`."""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]

    def key(index):
        names = [str(getattr(entry, "key", entry)) for entry in paths[index]]
        tables = [(_TOP_ORDER, _LAYER_ORDER, _BLOCK_ORDER)[min(depth, 2)] for depth in range(len(names) - 1)]
        return [_rank(name, table) for name, table in zip(names, tables + [_LEAF_ORDER])]

    keys = [key(i) for i in range(len(paths))]
    return tuple(sorted(range(len(paths)), key=keys.__getitem__))


def num_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))
