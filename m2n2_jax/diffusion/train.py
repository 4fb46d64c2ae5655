"""Training of the generators: one shared base, then per-language fine-tunes.

The base learns digit images from the class-symbol prompts ("7") for a short
while: it can draw every class, roughly, and the words of both languages are
untrained embeddings. Every fine-tune starts from the base, sees one
language's prompts only and never changes the symbol embeddings, so all
models read the condition space the base defined:

- scope "embeddings" learns only token embeddings (the generator network stays
  the base's): it learns the language's words, not better images;
- scope "all" trains the network too, with the symbol prompts replayed as one
  more template, so it also draws better images.

Tokens a fine-tune never sees get no gradient, and Adam then leaves their
embeddings exactly at the base's values.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import ConfigError
from . import prompts as pr
from .model import FlowModel, ModelConfig, init_params, to_model_space

SCOPES = ("all", "embeddings", "network")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Adam with a cosine-decayed learning rate for ``steps`` batches."""

    steps: int
    batch: int = 128
    lr: float = 2e-3

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1 and self.batch >= 1 and self.lr > 0):
            raise ConfigError(f"training needs integer steps >= 1, batch >= 1 and lr > 0 (got {self}).")


def token_table(*langs: str) -> jnp.ndarray:
    """Token ids [templates, 10, T]: the prompt of each template (of all ``langs``) and class."""
    tables = []
    for lang in langs:
        language = pr.language(lang)
        _, ids, _ = pr.prompts(language)
        tables.append(ids.reshape(len(language.templates), 10, pr.MAX_TOKENS))
    return jnp.asarray(np.concatenate(tables))


def flow_loss(model: FlowModel, params, x1, tokens, key):
    """Conditional flow-matching loss: MSE of the velocity on the straight noise-to-data path."""
    k_noise, k_t = jax.random.split(key)
    x0 = jax.random.normal(k_noise, x1.shape)
    t = jax.random.uniform(k_t, x1.shape[:1])
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    return jnp.mean((model.apply(params, xt, t, tokens) - (x1 - x0)) ** 2)


def gradient_mask(params, scope: str, frozen_tokens=()):
    """0/1 pytree like ``params``: what a fine-tune of this scope may change."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown fine-tuning scope {scope!r}; choose one of: {', '.join(SCOPES)}.")
    mask = jax.tree.map(lambda p: jnp.full(p.shape, 0.0 if scope == "embeddings" else 1.0, p.dtype), params)
    emb = jnp.full_like(params["params"]["text"]["embed"]["embedding"], 0.0 if scope == "network" else 1.0)
    emb = emb.at[jnp.asarray(frozen_tokens, jnp.int32)].set(0.0)
    text = {**mask["params"]["text"], "embed": {"embedding": emb}}
    return {**mask, "params": {**mask["params"], "text": text}}


def train_flow(model_config: ModelConfig, params, raw_images, labels, table, key, train: TrainConfig,
               mask=None):
    """(params, mean loss of the last 10 % of steps) after Adam on prompts drawn from ``table``.

    raw_images [M, 64] on the raw 0..16 scale with labels [M]; each example
    gets a random template of ``table`` [templates, 10, T] for its class.
    mask: optional 0/1 pytree multiplying the gradients (frozen parameters).
    """
    model = FlowModel(model_config)
    images = to_model_space(raw_images)
    labels = jnp.asarray(labels)
    opt = optax.adam(optax.cosine_decay_schedule(train.lr, train.steps, alpha=0.1))

    @jax.jit
    def run(params, key):
        def step(carry, k):
            p, s = carry
            k_idx, k_tpl, k_loss = jax.random.split(k, 3)
            idx = jax.random.randint(k_idx, (train.batch,), 0, images.shape[0])
            tpl = jax.random.randint(k_tpl, (train.batch,), 0, table.shape[0])
            tokens = table[tpl, labels[idx]]
            loss, grads = jax.value_and_grad(lambda q: flow_loss(model, q, images[idx], tokens, k_loss))(p)
            if mask is not None:
                grads = jax.tree.map(jnp.multiply, grads, mask)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, train.steps))
        return params, losses

    params, losses = run(params, key)
    tail = max(1, train.steps // 10)
    return params, float(np.mean(np.asarray(losses[-tail:])))


def zero_word_rows(params):
    """Params with every token embedding but the class symbols' set to zero.

    The base's vocabulary already lists the words of both languages, as
    placeholders it never trained: zero vectors, which pool to no condition.
    """
    words = np.setdiff1d(np.arange(len(pr.VOCAB)), pr.language_token_ids("symbol"))
    text = params["params"]["text"]
    emb = text["embed"]["embedding"].at[jnp.asarray(words)].set(0.0)
    return {**params, "params": {**params["params"], "text": {**text, "embed": {"embedding": emb}}}}


def train_base(model_config: ModelConfig, raw_images, labels, key, train: TrainConfig):
    """The shared base: fresh parameters (word embeddings zero) trained on class-symbol prompts."""
    init_key, train_key = jax.random.split(key)
    params = zero_word_rows(init_params(model_config, init_key))
    return train_flow(model_config, params, raw_images, labels, token_table("symbol"), train_key, train)


def fine_tune(model_config: ModelConfig, base_params, raw_images, labels, lang: str, key,
              train: TrainConfig, scope: str = "all"):
    """A copy of the base fine-tuned on one language's prompts (see the module docstring)."""
    table = token_table(lang) if scope == "embeddings" else token_table(lang, "symbol")
    mask = gradient_mask(base_params, scope, pr.language_token_ids("symbol"))
    return train_flow(model_config, base_params, raw_images, labels, table, key, train, mask)
