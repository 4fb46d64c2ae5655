"""Text-conditioned flow matching on 8x8 digit images, in Flax.

Images live in model space x in [-1, 1] (raw digits values v in 0..16 map to
v / 8 - 1). A prompt's tokens go through :class:`TextEncoder` (token
embeddings, masked mean over the prompt) to a condition vector; :class:`FlowModel` predicts the velocity of the straight path from
noise (t = 0) to data (t = 1). :func:`sample` integrates it with Euler steps
from given noise, so a fixed noise array (from a fixed key) gives fixed images.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..errors import ConfigError
from .prompts import MAX_TOKENS, VOCAB

IMAGE_DIM = 64
RAW_MAX = 16.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the generator and the number of sampling steps."""

    embed_dim: int = 32
    hidden: int = 256
    time_freqs: int = 8
    sample_steps: int = 12

    def __post_init__(self):
        for name in ("embed_dim", "hidden", "time_freqs", "sample_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer (got {value!r}).")


def to_model_space(raw):
    """Raw digits values 0..16 -> [-1, 1]."""
    return jnp.asarray(raw, jnp.float32) / (RAW_MAX / 2) - 1.0


def to_raw(x):
    """Model space -> raw digits scale 0..16 (clipped), what the classifier reads."""
    return jnp.clip((x + 1.0) * (RAW_MAX / 2), 0.0, RAW_MAX)


class TextEncoder(nn.Module):
    """Token ids [..., T] (0 = padding) -> condition vectors [..., embed_dim].

    The condition is the mean of the prompt's token embeddings: each word's
    meaning lives in its own embedding row, so what a model knows of one
    language's words sits in parameters no other language touches.
    """

    embed_dim: int

    @nn.compact
    def __call__(self, tokens):
        emb = nn.Embed(len(VOCAB), self.embed_dim, name="embed")(tokens)
        mask = (tokens != 0)[..., None].astype(emb.dtype)
        return jnp.sum(emb * mask, axis=-2) / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)


def time_features(t, freqs: int):
    """Sinusoidal features [..., 2 * freqs] of times t in [0, 1]."""
    scales = jnp.pi * 2.0 ** jnp.arange(freqs, dtype=jnp.float32)
    angles = jnp.asarray(t, jnp.float32)[..., None] * scales
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class FlowModel(nn.Module):
    """Velocity v(x_t, t, prompt) of the noise-to-image path."""

    config: ModelConfig = ModelConfig()

    def setup(self):
        c = self.config
        self.text = TextEncoder(c.embed_dim)
        self.in_x = nn.Dense(c.hidden)
        self.in_cond = nn.Dense(c.hidden)
        self.mid = nn.Dense(c.hidden)
        self.mid_cond = nn.Dense(c.hidden)
        self.out = nn.Dense(IMAGE_DIM)

    def encode(self, tokens):
        return self.text(tokens)

    def velocity(self, x, t, cond):
        feats = jnp.concatenate([x, time_features(t, self.config.time_freqs)], axis=-1)
        h = nn.gelu(self.in_x(feats) + self.in_cond(cond))
        h = nn.gelu(self.mid(h) + self.mid_cond(cond))
        return self.out(h)

    def __call__(self, x, t, tokens):
        return self.velocity(x, t, self.encode(tokens))


def init_params(config: ModelConfig, key):
    """Fresh parameters of a FlowModel."""
    model = FlowModel(config)
    return model.init(key, jnp.zeros((1, IMAGE_DIM)), jnp.zeros((1,)),
                      jnp.ones((1, MAX_TOKENS), jnp.int32))


def sample(config: ModelConfig, params, tokens, noise):
    """Images [..., 64] in model space from prompts [..., T] and noise [..., 64].

    Euler integration of the velocity from t = 0 (the noise) to t = 1 in
    ``config.sample_steps`` equal steps: deterministic in (params, noise).
    """
    model = FlowModel(config)
    cond = model.apply(params, tokens, method=FlowModel.encode)
    steps = config.sample_steps
    dt = 1.0 / steps

    def step(x, i):
        t = jnp.full(x.shape[:-1], i * dt, x.dtype)
        return x + dt * model.apply(params, x, t, cond, method=FlowModel.velocity), None

    x, _ = jax.lax.scan(step, noise, jnp.arange(steps, dtype=noise.dtype))
    return x


def fixed_noise(key, num_prompts: int, samples: int):
    """Noise [num_prompts, samples, 64] drawn once from ``key``."""
    return jax.random.normal(key, (num_prompts, samples, IMAGE_DIM), jnp.float32)


def sample_prompts(config: ModelConfig, params, tokens, noise):
    """Images [M, S, 64] for prompts [M, T] and noise [M, S, 64] (S samples each)."""
    tokens = jnp.broadcast_to(tokens[:, None, :], noise.shape[:2] + tokens.shape[-1:])
    return sample(config, params, tokens, noise)
