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

from m2n2_jax.llm.model import apply, broadcast_cache
from m2n2_jax.llm.scoring import scores_at


def answer_scores(config, params, tokens, targets, eos_ids: tuple = ()):
    """(exact match [B] in {0, 1}, gold likelihood [B] in (0, 1]) by teacher forcing.

    ``targets`` [B, L] marks the answer tokens (and the final <eos>). ``eos_ids``: every id
    that ends generation; where the gold token is the first of them, any of them counts as right.
    """
    return scores_from_logits(apply(config, params, tokens), tokens, targets, eos_ids)


def scores_from_logits(logits, tokens, targets, eos_ids: tuple = ()):
    """(exact match [B], gold likelihood [B]) from logits [B, L, V] of ``tokens``."""
    return scores_at(logits[:, :-1], tokens[:, 1:], targets[:, 1:], eos_ids)


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


def _prefill(config, params, tokens, valid, positions, cache, index=0, matmul="float32"):
    logits, cache = apply(config, params, tokens, valid, positions, cache, index, last_only=True, matmul=matmul)
    return logits[:, -1], cache


def _step(config, params, token, valid, position, cache, index, matmul="float32"):
    logits, cache = apply(config, params, token[:, None], valid, position[:, None], cache, index, matmul=matmul)
    return logits[:, -1], cache


_prefill_jit = jax.jit(_prefill, static_argnums=0, static_argnames=("matmul",))
_step_jit = jax.jit(_step, static_argnums=0, donate_argnums=(5,), static_argnames=("matmul",))


_broadcast_cache_jit = jax.jit(broadcast_cache, static_argnums=(1, 2))


def greedy(config, params, prompts, max_new_tokens: int, eos_ids, stop=(), decode=None, cache_dtype=jnp.float32,
           bucket: int = 1, prefix: bool = True, matmul: str = "float32"):
    """Greedy continuations of token-id prompts, decoded together with a key/value cache.

    prompts: lists of ids (any lengths; left-padded internally). eos_ids: ids that end a sequence
    (kept as its last token). stop: strings that end a sequence once its decoded text contains one
    (``decode(ids) -> str`` required); the token completing it is kept, as transformers does.
    bucket: left-pad the prompts to a multiple of this many tokens, so that batches of similar lengths
    share one compiled prefill and step (padding is masked; the result does not change).
    prefix: run the tokens every prompt starts with (a shared system prompt) once, for one row, and
    continue every prompt from its key/value cache (not with a sliding window, which counts slots). matmul: "auto", "float32" or "bfloat16"
    (:func:`m2n2_jax.llm.model.resolve_matmul`).
    Returns one list of new ids per prompt.
    """
    from m2n2_jax.llm.model import resolve_matmul
    from m2n2_jax.llm.scoring import shared_prefix_length

    matmul = resolve_matmul(matmul)
    eos = np.asarray(sorted({int(e) for e in np.atleast_1d(eos_ids)}))
    if stop and decode is None:
        raise ValueError("stop strings need decode(ids) -> text")
    batch = len(prompts)
    lengths = np.asarray([len(p) for p in prompts])
    # the padding between the prefix and the rest would stretch slot distances: no prefix under a sliding window
    prefix = prefix and batch > 1 and config.sliding_window is None
    shared = shared_prefix_length([np.asarray(p) for p in prompts], int(lengths.min()) - 1) if prefix else 0
    step = max(1, int(bucket))
    longest = -(-int(lengths.max() - shared) // step) * step  # the prompts' rest, left-padded to this
    slots = shared + longest + max_new_tokens
    tokens = np.zeros((batch, longest), np.int32)
    valid = np.ones((batch, slots), np.int32)  # the prefix's and the generated tokens' slots are all valid
    valid[:, shared:shared + longest] = 0
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) + shared:] = p[shared:]
        valid[i, shared + longest - len(p) + shared:shared + longest] = 1
    positions = np.maximum(shared + np.cumsum(valid[:, shared:shared + longest], axis=1) - 1, 0)
    shape = (1 if shared else batch, shared if shared else slots, config.num_key_value_heads, config.head_dim)
    cache = [(jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype)) for _ in range(config.num_hidden_layers)]
    if shared:
        head = jnp.asarray(np.asarray(prompts[0][:shared], np.int32)[None])
        _, cache = _prefill_jit(config, params, head, jnp.ones((1, shared), jnp.int32),
                                jnp.arange(shared)[None], cache, matmul=matmul)
        cache = _broadcast_cache_jit(cache, batch, slots - shared)
    logits, cache = _prefill_jit(config, params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(positions),
                                 cache, shared, matmul=matmul)
    out = [[] for _ in prompts]
    done = np.zeros(batch, bool)
    for n in range(max_new_tokens):
        token = np.asarray(jnp.argmax(logits, axis=-1)).astype(np.int32)
        for i in np.flatnonzero(~done):
            out[i].append(int(token[i]))
            if token[i] in eos or (stop and any(s in decode(out[i]) for s in stop)):
                done[i] = True
        if done.all() or n == max_new_tokens - 1:
            break
        logits, cache = _step_jit(config, params, jnp.asarray(token), jnp.asarray(valid),
                                  jnp.asarray(lengths + n), cache, shared + longest + n, matmul=matmul)
    return out
