"""Batched greedy decoding and teacher-forced scoring of answers.

:func:`greedy` decodes with a key/value cache, as transformers' ``generate`` does:
prompts are left-padded (padding keys hidden, positions counted from each prompt's
first real token), one forward pass fills the cache, then each step feeds one
token per sequence; a sequence stops at an end-of-sequence id or once its text
contains a stop string.

Teacher forcing gives both per-example scores in one forward pass:
- exact match: the greedy answer equals the gold answer (with its <eos>) iff
  the argmax at every answer position is the gold token, given the gold prefix,
- likelihood: exp(mean log p) of the gold answer tokens, in (0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.llm.model import apply


def answer_scores(config, params, tokens, targets, eos_ids: tuple = ()):
    """(exact match [B] in {0, 1}, gold likelihood [B] in (0, 1]) by teacher forcing.

    ``targets`` [B, L] marks the answer tokens (and the final <eos>). ``eos_ids``: every id
    that ends generation; where the gold token is the first of them, any of them counts as right.
    """
    return scores_from_logits(apply(config, params, tokens), tokens, targets, eos_ids)


def scores_from_logits(logits, tokens, targets, eos_ids: tuple = ()):
    """(exact match [B], gold likelihood [B]) from logits [B, L, V] of ``tokens``."""
    logits = logits[:, :-1].astype(jnp.float32)
    gold = tokens[:, 1:]
    mask = targets[:, 1:]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    gold_log_probs = jnp.take_along_axis(log_probs, gold[..., None], axis=-1)[..., 0]
    predicted = jnp.argmax(logits, axis=-1)
    right = (predicted == gold) | (mask == 0)
    if len(eos_ids) > 1:
        right = right | ((gold == eos_ids[0]) & jnp.isin(predicted, jnp.asarray(eos_ids)))
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


def _prefill(config, params, tokens, valid, positions, cache):
    logits, cache = apply(config, params, tokens, valid, positions, cache, 0, last_only=True)
    return logits[:, -1], cache


def _step(config, params, token, valid, position, cache, index):
    logits, cache = apply(config, params, token[:, None], valid, position[:, None], cache, index)
    return logits[:, -1], cache


_prefill_jit = jax.jit(_prefill, static_argnums=0)
_step_jit = jax.jit(_step, static_argnums=0, donate_argnums=(5,))


def greedy(config, params, prompts, max_new_tokens: int, eos_ids, stop=(), decode=None, cache_dtype=jnp.float32,
           bucket: int = 1):
    """Greedy continuations of token-id prompts, decoded together with a key/value cache.

    prompts: lists of ids (any lengths; left-padded internally). eos_ids: ids that end a sequence
    (kept as its last token). stop: strings that end a sequence once its decoded text contains one
    (``decode(ids) -> str`` required); the token completing it is kept, as transformers does.
    bucket: left-pad the prompts to a multiple of this many tokens, so that batches of similar lengths
    share one compiled prefill and step (padding is masked; the result does not change).
    Returns one list of new ids per prompt.
    """
    eos = np.asarray(sorted({int(e) for e in np.atleast_1d(eos_ids)}))
    if stop and decode is None:
        raise ValueError("stop strings need decode(ids) -> text")
    batch, longest = len(prompts), max(len(p) for p in prompts)
    longest = -(-longest // max(1, int(bucket))) * max(1, int(bucket))
    slots = longest + max_new_tokens
    tokens = np.zeros((batch, longest), np.int32)
    valid = np.zeros((batch, slots), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = p
        valid[i, longest - len(p):] = 1
    valid[:, longest:] = 1  # the slots generated tokens will fill
    positions = np.maximum(np.cumsum(valid[:, :longest], axis=1) - 1, 0)
    lengths = np.asarray([len(p) for p in prompts])
    shape = (batch, slots, config.num_key_value_heads, config.head_dim)
    cache = [(jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype)) for _ in range(config.num_hidden_layers)]
    logits, cache = _prefill_jit(config, params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(positions), cache)
    out = [[] for _ in prompts]
    done = np.zeros(batch, bool)
    for step in range(max_new_tokens):
        token = np.asarray(jnp.argmax(logits, axis=-1)).astype(np.int32)
        for i in np.flatnonzero(~done):
            out[i].append(int(token[i]))
            if token[i] in eos or (stop and any(s in decode(out[i]) for s in stop)):
                done[i] = True
        if done.all() or step == max_new_tokens - 1:
            break
        logits, cache = _step_jit(config, params, jnp.asarray(token), jnp.asarray(valid),
                                  jnp.asarray(lengths + step), cache, longest + step)
    return out
