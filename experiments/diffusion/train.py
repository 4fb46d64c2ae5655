"""Training of the generators: a bilingual base, then one-language fine-tunes.

As with JSDXL and the SDXL variants, all seeds share one architecture and
start from one base:

- the base learns images from prompts of both languages (briefly: a weak
  image generator that reads both languages' words);
- the Japanese seed fine-tunes encoder and denoiser on Japanese prompts only;
- the English seeds fine-tune the denoiser only, on English prompts only, each
  with its own data, length or time sampling (as SDXL 1.0, SDXL-DPO and
  Juggernaut differ); their encoder stays the base's.

Token embeddings of words a fine-tune never sees get no gradient, and Adam
then leaves them exactly at the base's values.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.errors import ConfigError
from experiments.diffusion import prompts as pr
from experiments.diffusion.model import ModelConfig, init_params, to_model_space, velocity

TRAINABLE = ("all", "denoiser")
TIME_SAMPLING = ("uniform", "logit-normal")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Adam with a cosine-decayed learning rate for ``steps`` batches.

    time_sampling: how flow times t are drawn ("uniform" or "logit-normal",
    the latter concentrating on mid-path times as SD3 does).
    """

    steps: int
    batch: int = 128
    lr: float = 2e-3
    time_sampling: str = "uniform"

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1 and self.batch >= 1 and self.lr > 0):
            raise ConfigError(f"training needs integer steps >= 1, batch >= 1 and lr > 0 (got {self}).")
        if self.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"time_sampling must be one of {TIME_SAMPLING} (got {self.time_sampling!r}).")


def token_table(*langs: str) -> jnp.ndarray:
    """Token ids [templates, 10, T]: the prompt of each template (of all ``langs``) and class."""
    tables = []
    for lang in langs:
        language = pr.language(lang)
        _, ids, _ = pr.prompts(language)
        tables.append(ids.reshape(len(language.templates), 10, pr.MAX_TOKENS))
    return jnp.asarray(np.concatenate(tables))


def flow_loss(config: ModelConfig, params, x1, tokens, key, time_sampling: str = "uniform"):
    """Conditional flow-matching loss: MSE of the velocity on the straight noise-to-data path."""
    k_noise, k_t = jax.random.split(key)
    x0 = jax.random.normal(k_noise, x1.shape)
    if time_sampling == "logit-normal":
        t = jax.nn.sigmoid(jax.random.normal(k_t, x1.shape[:1]))
    else:
        t = jax.random.uniform(k_t, x1.shape[:1])
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return jnp.mean((velocity(config, params, xt, t, tokens) - (x1 - x0)) ** 2)


def gradient_mask(params, trainable: str):
    """0/1 pytree like ``params``: "all", or "denoiser" (the encoder frozen)."""
    if trainable not in TRAINABLE:
        raise ConfigError(f"unknown trainable part {trainable!r}; choose one of: {', '.join(TRAINABLE)}.")
    enc = 1.0 if trainable == "all" else 0.0
    return {"encoder": jax.tree.map(lambda p: jnp.full(p.shape, enc, p.dtype), params["encoder"]),
            "denoiser": jax.tree.map(jnp.ones_like, params["denoiser"])}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _adam_run(config: ModelConfig, train: TrainConfig, params, images, labels, table, mask, key):
    """Adam steps as one scan; jitted once per (config, train, shapes), whatever is frozen."""
    opt = optax.adam(optax.cosine_decay_schedule(train.lr, train.steps, alpha=0.1))

    def step(carry, k):
        p, s = carry
        k_idx, k_tpl, k_loss = jax.random.split(k, 3)
        idx = jax.random.randint(k_idx, (train.batch,), 0, images.shape[0])
        tpl = jax.random.randint(k_tpl, (train.batch,), 0, table.shape[0])
        tokens = table[tpl, labels[idx]]
        loss, grads = jax.value_and_grad(
            lambda q: flow_loss(config, q, images[idx], tokens, k_loss, train.time_sampling))(p)
        grads = jax.tree.map(jnp.multiply, grads, mask)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, train.steps))
    return params, losses


def train_flow(config: ModelConfig, params, raw_images, labels, table, key, train: TrainConfig,
               trainable: str = "all"):
    """(params, mean loss of the last 10 % of steps) after Adam on prompts drawn from ``table``.

    raw_images [M, 64] (0..16) with labels [M]; each example gets a random
    template of ``table`` [templates, 10, T] for its class.
    """
    mask = gradient_mask(params, trainable)
    params, losses = _adam_run(config, train, params, to_model_space(raw_images), jnp.asarray(labels),
                               table, mask, key)
    tail = max(1, train.steps // 10)
    return params, float(np.mean(np.asarray(losses[-tail:])))


def train_base(config: ModelConfig, raw_images, labels, key, train: TrainConfig, langs=("japanese", "english")):
    """The shared base: fresh parameters trained on prompts of both languages."""
    init_key, train_key = jax.random.split(key)
    return train_flow(config, init_params(config, init_key), raw_images, labels, token_table(*langs),
                      train_key, train, "all")


def fine_tune(config: ModelConfig, base_params, raw_images, labels, lang: str, key, train: TrainConfig,
              trainable: str = "all"):
    """A copy of the base fine-tuned on one language's prompts."""
    return train_flow(config, base_params, raw_images, labels, token_table(lang), key, train, trainable)
