"""Batched greedy decoding and teacher-forced scoring of answers.

Greedy decoding writes into a fixed right-padded buffer: at step i every
sequence's next token is the argmax at position prompt_length - 1 + i. With a
causal mask the padding after a sequence never influences it, so no cache or
left-padding is needed (a KV cache would be the next step for long answers).

Teacher forcing gives both per-example scores in one forward pass:
- exact match: the greedy answer equals the gold answer (with its <eos>) iff
  the argmax at every answer position is the gold token, given the gold prefix,
- likelihood: exp(mean log p) of the gold answer tokens, in (0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .model import apply


def greedy_generate(config, params, tokens, prompt_lengths, max_new_tokens: int, eos_id: int, pad_id: int = 0):
    """Greedy continuations [B, max_new_tokens] of the prompts (pad after <eos>).

    tokens [B, L] hold the prompts right-padded; L must leave room for
    max_new_tokens after the longest prompt.
    """
    tokens = jnp.asarray(tokens)
    prompt_lengths = jnp.asarray(prompt_lengths)
    rows = jnp.arange(tokens.shape[0])
    positions = jnp.arange(tokens.shape[1])
    buffer = jnp.where(positions[None] < prompt_lengths[:, None], tokens, pad_id)

    def step(carry, i):
        buffer, done = carry
        logits = apply(config, params, buffer)
        at = prompt_lengths - 1 + i
        token = jnp.argmax(logits[rows, at], axis=-1).astype(buffer.dtype)
        token = jnp.where(done, pad_id, token)
        buffer = buffer.at[rows, jnp.minimum(at + 1, buffer.shape[1] - 1)].set(token)
        return (buffer, done | (token == eos_id)), token

    (_, _), new = jax.lax.scan(step, (buffer, jnp.zeros(tokens.shape[0], bool)), jnp.arange(max_new_tokens))
    return new.T


def answer_scores(config, params, tokens, targets):
    """(exact match [B] in {0, 1}, gold likelihood [B] in (0, 1]) by teacher forcing.

    ``targets`` [B, L] marks the answer tokens (and the final <eos>).
    """
    return scores_from_logits(apply(config, params, tokens), tokens, targets)


def scores_from_logits(logits, tokens, targets):
    """(exact match [B], gold likelihood [B]) from logits [B, L, V] of ``tokens``."""
    logits = logits[:, :-1].astype(jnp.float32)
    gold = tokens[:, 1:]
    mask = targets[:, 1:]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    gold_log_probs = jnp.take_along_axis(log_probs, gold[..., None], axis=-1)[..., 0]
    right = (jnp.argmax(logits, axis=-1) == gold) | (mask == 0)
    count = jnp.maximum(jnp.sum(mask, axis=1), 1)
    likelihood = jnp.exp(jnp.sum(gold_log_probs * mask, axis=1) / count)
    return jnp.all(right, axis=1).astype(jnp.float32), likelihood


def answer_loss(config, params, tokens, targets, lm_weight: float = 0.0):
    """Mean cross-entropy on answer tokens, plus ``lm_weight`` times the loss on all tokens."""
    logits = apply(config, params, tokens)[:, :-1].astype(jnp.float32)
    gold = tokens[:, 1:]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), gold[..., None], axis=-1)[..., 0]
    mask = targets[:, 1:]
    loss = jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)
    if lm_weight:
        real = (gold != 0).astype(jnp.float32)
        loss = loss + lm_weight * jnp.sum(nll * real) / jnp.maximum(jnp.sum(real), 1)
    return loss
