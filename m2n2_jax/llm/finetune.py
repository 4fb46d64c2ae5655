"""Full fine-tuning of a Llama-family model on (prompt, target) pairs with optax.

Why full fine-tuning and not LoRA: the paper's seeds (WizardMath-7B, AgentEvol-7B)
are full fine-tunes of Llama-2-7B, so their task vectors touch every weight, and
that is what the merge methods (TIES trimming, DARE dropping, SLERP angles over
the whole vector) were designed for. At 135M parameters the Adam state (2 x 0.54
GB in float32) fits easily, and a LoRA step would cost nearly as much compute here
(the backward pass through the frozen weights dominates).

- The loss is the mean cross-entropy over target tokens only (the reply and its
  end token); prompt and padding tokens carry no loss (:func:`target_loss`).
- Batches hold examples of similar length (:func:`length_batches`): each epoch the
  examples are shuffled, stably sorted by length and cut into batches whose order is
  shuffled again, and each batch is trimmed to its longest row rounded up to
  ``pad_to`` tokens (few distinct shapes, so few compilations).
- Deterministic for a seed: the batch order comes from ``numpy.random.default_rng(seed)``
  and nothing else is random.
- ``compute_dtype=bfloat16`` runs the forward and backward matmuls in bfloat16 (weights
  cast inside the loss; master weights, Adam state and the softmax stay float32).
- :func:`specialist` caches the result as a Hugging Face directory (with the base's
  tokenizer files) and a ``finetune.json`` fingerprint, so a re-run with the same
  base, data and settings loads it instead of training.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm import checkpoint
from m2n2_jax.llm.data import Batch, encode
from m2n2_jax.llm.model import apply


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """steps: optimizer steps; batch_size: examples per step; learning_rate: AdamW peak (linear warm-up over
    ``warmup`` steps, cosine decay to 10 %); pad_to: batch lengths are rounded up to a multiple of it."""

    steps: int = 150
    batch_size: int = 8
    learning_rate: float = 5e-5
    warmup: int = 10
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    pad_to: int = 16
    compute_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.pad_to < 1:
            raise ConfigError(f"fine-tuning needs steps, batch_size and pad_to >= 1 (got {self.steps}, "
                              f"{self.batch_size}, {self.pad_to}).")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"compute_dtype must be 'float32' or 'bfloat16' (got {self.compute_dtype!r}).")


def target_loss(config, params, tokens, targets, compute_dtype=jnp.float32):
    """Mean cross-entropy of the tokens marked in ``targets`` [B, L] (1 = a target token), each predicted
    from the position before it; prompt and padding positions carry no loss."""
    if compute_dtype != jnp.float32:
        params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    logits = apply(config, params, tokens)[:, :-1].astype(jnp.float32)
    gold, mask = tokens[:, 1:], targets[:, 1:]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), gold[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def lengths_of(batch: Batch) -> np.ndarray:
    """Real length (up to the last target token) of every row."""
    marked = batch.targets > 0
    last = batch.targets.shape[1] - np.argmax(marked[:, ::-1], axis=1)
    return np.where(marked.any(axis=1), last, batch.prompt_lengths)


def length_batches(lengths, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches of similar length, in a random order."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_schedule(lengths, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """The index batches of ``steps`` steps (epochs of :func:`length_batches`, as many as needed)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < steps:
        out.extend(length_batches(lengths, batch_size, rng))
    return out[:steps]


def make_optimizer(s: FinetuneSettings):
    schedule = optax.warmup_cosine_decay_schedule(0.0, s.learning_rate, max(0, min(s.warmup, s.steps - 1)),
                                                  s.steps, s.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(s.clip_norm), optax.adamw(schedule, weight_decay=s.weight_decay))


def finetune(config, params, batch: Batch, settings: FinetuneSettings, log=None, log_every: int = 10):
    """Fine-tune all of ``params`` on the examples of ``batch``; returns (params, per-step losses).

    ``log(message)`` receives progress (step, loss, seconds per step) every ``log_every`` steps.
    """
    s = settings
    if len(batch) == 0:
        raise ConfigError("fine-tuning got no examples; pass at least one (prompt, target) pair.")
    dtype = jnp.bfloat16 if s.compute_dtype == "bfloat16" else jnp.float32
    optimizer = make_optimizer(s)
    lengths = lengths_of(batch)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(lambda p: target_loss(config, p, tokens, targets, dtype))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(lambda p: jnp.array(p, jnp.float32), params)  # a copy: donation consumes it
    opt_state = optimizer.init(params)
    losses, start = [], time.perf_counter()
    for step, index in enumerate(batch_schedule(lengths, s.batch_size, s.steps, s.seed)):
        width = min(batch.tokens.shape[1], -(-int(lengths[index].max()) // s.pad_to) * s.pad_to)
        if len(index) < s.batch_size:  # the last batch of an epoch: repeat rows to keep one shape per width
            index = np.resize(index, s.batch_size)
        params, opt_state, loss = update(params, opt_state, jnp.asarray(batch.tokens[index, :width]),
                                         jnp.asarray(batch.targets[index, :width]))
        losses.append(float(loss))
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == s.steps):
            elapsed = time.perf_counter() - start
            recent = np.mean(losses[-log_every:])
            log(f"step {step + 1}/{s.steps}  loss {recent:.4f}  {elapsed / (step + 1):.2f} s/step  "
                f"({elapsed:.0f} s)")
    return params, losses


def fingerprint(pairs, settings: FinetuneSettings, base: str) -> str:
    """A hash of the training pairs, the settings and the base model's name: the cache key."""
    h = hashlib.sha256()
    h.update(json.dumps([base, dataclasses.asdict(settings)], sort_keys=True).encode())
    for prompt, target in pairs:
        h.update(prompt.encode())
        h.update(b"\0")
        h.update(target.encode())
        h.update(b"\1")
    return h.hexdigest()[:16]


def specialist(directory: str, config, base_params, tokenizer, pairs, settings: FinetuneSettings, like: str,
               log=None, retrain: bool = False):
    """Fine-tuned params for ``pairs``, cached as a Hugging Face directory (``like``: the base checkpoint whose
    config and tokenizer files are copied). Returns (params, info); info says whether it was loaded."""
    key = fingerprint(pairs, settings, os.path.basename(like))
    info_path = os.path.join(directory, "finetune.json")
    if not retrain and os.path.isfile(info_path) and os.path.isfile(os.path.join(directory, "config.json")):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("fingerprint") == key:
            _, params = checkpoint.load(directory)
            if log is not None:
                log(f"loaded the cached fine-tune {directory}")
            return params, {**info, "cached": True}
    batch = encode(tokenizer, pairs)
    start = time.perf_counter()
    params, losses = finetune(config, base_params, batch, settings, log)
    info = {"fingerprint": key, "settings": dataclasses.asdict(settings), "examples": len(pairs),
            "tokens_per_example_mean": float(np.mean(lengths_of(batch))), "seconds": time.perf_counter() - start,
            "first_losses": losses[:10], "last_losses": losses[-10:], "base": os.path.basename(like)}
    checkpoint.save(directory, config, params, dtype="float32", like=like)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return params, {**info, "cached": False}
