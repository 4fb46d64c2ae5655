"""Text-to-image flow matching on 8x8 digits: a text encoder and a denoiser, in Flax.

Like SDXL at toy scale: :class:`TextEncoder` turns prompt tokens into token
states (embeddings, positions, one self-attention block); :class:`Denoiser`
predicts the velocity of the straight noise-to-image path and reads the
prompt only through cross-attention to those token states (the U-Net's
role). A model is ``{"encoder": ..., "denoiser": ...}``, so a merge can keep
one encoder fixed and merge denoisers only. Images live in [-1, 1] (raw
digits values v in 0..16 map to v / 8 - 1). :func:`sample` integrates the
velocity with Euler steps from given noise: fixed noise gives fixed images.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2n2_jax.errors import ConfigError
from experiments.diffusion.prompts import MAX_TOKENS, VOCAB

IMAGE_DIM = 64
RAW_MAX = 16.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of encoder and denoiser, and the number of sampling steps."""

    embed_dim: int = 32
    hidden: int = 128
    heads: int = 4
    blocks: int = 2
    time_freqs: int = 8
    sample_steps: int = 8

    def __post_init__(self):
        for name in ("embed_dim", "hidden", "heads", "blocks", "time_freqs", "sample_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer (got {value!r}).")
        if self.hidden % self.heads or self.embed_dim % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) and embed_dim ({self.embed_dim}) must be multiples of "
                              f"heads ({self.heads}).")


def to_model_space(raw):
    """Raw digits values 0..16 -> [-1, 1]."""
    return jnp.asarray(raw, jnp.float32) / (RAW_MAX / 2) - 1.0


def to_raw(x):
    """Model space -> raw digits scale 0..16 (clipped), what the judge reads."""
    return jnp.clip((x + 1.0) * (RAW_MAX / 2), 0.0, RAW_MAX)


class TextEncoder(nn.Module):
    """Token ids [..., T] (0 = padding) -> (token states [..., T, E], mask [..., T])."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens):
        c = self.config
        mask = tokens != 0
        h = nn.Embed(len(VOCAB), c.embed_dim, name="embed")(tokens)
        h = h + self.param("position", nn.initializers.normal(0.02), (MAX_TOKENS, c.embed_dim))
        pair = nn.make_attention_mask(mask, mask)
        h = h + nn.MultiHeadDotProductAttention(c.heads, name="self_attn")(nn.LayerNorm(name="ln1")(h), mask=pair)
        h = h + nn.Dense(c.embed_dim, name="mlp_out")(nn.gelu(nn.Dense(2 * c.embed_dim, name="mlp_in")(
            nn.LayerNorm(name="ln2")(h))))
        return nn.LayerNorm(name="ln_out")(h), mask


def time_features(t, freqs: int):
    """Sinusoidal features [..., 2 * freqs] of times t in [0, 1]."""
    scales = jnp.pi * 2.0 ** jnp.arange(freqs, dtype=jnp.float32)
    angles = jnp.asarray(t, jnp.float32)[..., None] * scales
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Denoiser(nn.Module):
    """Velocity v(x_t, t | token states): MLP blocks, each with cross-attention to the prompt.

    Parameters of the cross-attention layers have ``cross_attn`` in their path
    (the attention group of the merge); the rest is the other group.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, t, states, mask):
        c = self.config
        feats = jnp.concatenate([x, time_features(t, c.time_freqs)], axis=-1)
        h = nn.gelu(nn.Dense(c.hidden, name="in")(feats))
        kv_mask = mask[..., None, None, :]                       # [..., heads=1, q=1, T]
        for i in range(c.blocks):
            q = nn.LayerNorm(name=f"ln{i}")(h)[..., None, :]
            a = nn.MultiHeadDotProductAttention(c.heads, qkv_features=c.hidden, out_features=c.hidden,
                                                name=f"cross_attn{i}")(q, states, mask=kv_mask)
            h = h + a[..., 0, :]
            h = h + nn.Dense(c.hidden, name=f"mlp{i}")(nn.gelu(h))
        return nn.Dense(IMAGE_DIM, name="out")(nn.gelu(h))


def init_params(config: ModelConfig, key):
    """Fresh {"encoder", "denoiser"} parameters."""
    k_enc, k_den = jax.random.split(key)
    tokens = jnp.ones((1, MAX_TOKENS), jnp.int32)
    enc = TextEncoder(config).init(k_enc, tokens)
    states, mask = TextEncoder(config).apply(enc, tokens)
    den = Denoiser(config).init(k_den, jnp.zeros((1, IMAGE_DIM)), jnp.zeros((1,)), states, mask)
    return {"encoder": enc, "denoiser": den}


def encode(config: ModelConfig, encoder_params, tokens):
    return TextEncoder(config).apply(encoder_params, tokens)


def velocity(config: ModelConfig, params, x, t, tokens):
    """The full model's velocity (for training)."""
    states, mask = encode(config, params["encoder"], tokens)
    return Denoiser(config).apply(params["denoiser"], x, t, states, mask)


def sample(config: ModelConfig, params, tokens, noise):
    """Images [M, S, 64] in model space for prompts [M, T] and noise [M, S, 64].

    The prompt is encoded once; Euler integration of the velocity from t = 0
    (the noise) to t = 1 in ``config.sample_steps`` equal steps: deterministic
    in (params, tokens, noise).
    """
    states, mask = encode(config, params["encoder"], tokens)
    shape = noise.shape[:2]
    states = jnp.broadcast_to(states[:, None], shape + states.shape[1:])
    mask = jnp.broadcast_to(mask[:, None], shape + mask.shape[1:])
    den = Denoiser(config)
    steps = config.sample_steps
    dt = 1.0 / steps

    def step(x, i):
        t = jnp.full(shape, i * dt, x.dtype)
        return x + dt * den.apply(params["denoiser"], x, t, states, mask), None

    x, _ = jax.lax.scan(step, noise, jnp.arange(steps, dtype=noise.dtype))
    return x


def fixed_noise(key, num_prompts: int, samples: int):
    """Noise [num_prompts, samples, 64] drawn once from ``key``."""
    return jax.random.normal(key, (num_prompts, samples, IMAGE_DIM), jnp.float32)
