"""Training with optax: pre-training the base and fine-tuning specialists."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.llm.generate import answer_loss


def train(config, params, batch, steps: int, seed: int, batch_size: int = 64, learning_rate: float = 3e-3,
          lm_weight: float = 0.0, weight_decay: float = 0.0, log=None, log_every: int = 200,
          replay=None, replay_weight: float = 0.0):
    """Adam(W) with cosine decay on minibatches of ``batch`` (a data.Batch). Returns params.

    With ``replay`` (another data.Batch, e.g. the pre-training data) each step
    adds ``replay_weight`` times its loss (answers and text), which limits
    forgetting during fine-tuning.
    """
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10 + 1), steps, learning_rate * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    opt_state = optimizer.init(params)
    tokens, targets = jnp.asarray(batch.tokens), jnp.asarray(batch.targets)
    replay = batch if replay is None else replay
    r_tokens, r_targets = jnp.asarray(replay.tokens), jnp.asarray(replay.targets)

    def loss_fn(p, index, r_index):
        loss = answer_loss(config, p, tokens[index], targets[index], lm_weight)
        if replay_weight:
            loss = loss + replay_weight * answer_loss(config, p, r_tokens[r_index], r_targets[r_index], 1.0)
        return loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, index, r_index):
        loss, grads = jax.value_and_grad(loss_fn)(params, index, r_index)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    params = jax.tree.map(jnp.array, params)  # a copy: donation must not consume the caller's arrays
    for step in range(steps):
        index = jnp.asarray(rng.integers(0, len(batch), batch_size))
        r_index = jnp.asarray(rng.integers(0, len(replay), batch_size // 2) if replay_weight
                              else np.zeros(batch_size // 2, np.int64))
        params, opt_state, loss = update(params, opt_state, index, r_index)
        if log is not None and (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps}  loss {float(loss):.4f}")
    return params
