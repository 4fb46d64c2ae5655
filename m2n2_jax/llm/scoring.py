"""Teacher-forced exact match of many answers, computed without waste.

:func:`plan_rows` prepares a data set once, on the host; :func:`exact_match_scorer`
then scores a model's parameters on it (jit-able, [N] scores in {0, 1}, the same as
:func:`m2n2_jax.llm.generate.answer_scores` row by row). Four savings, each optional
so that the bench can time them one by one:

- target only: the final norm and the LM head run only at the positions whose
  prediction is scored (the answer tokens), not at every position of every row;
- buckets: rows are sorted by length and batched with rows of similar length, each
  batch padded only to its own longest row (``max_padding`` bounds the padding);
- prefix: the tokens every row starts with (a shared system prompt) run once, and
  each batch continues from their key/value cache;
- matmul: "bfloat16" runs the matmuls on bfloat16 operands with float32
  accumulation (:mod:`m2n2_jax.llm.model`); "auto" picks it where it is faster.

Batches of one shape run under ``lax.map``, so each shape is compiled once.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.llm import model

SHAPE_MULTIPLE = 8  # bucket lengths are rounded up to this many tokens (fewer shapes to compile)


@dataclasses.dataclass(frozen=True)
class Group:
    """Batches of one shape: rows [G, B] (indices into the data set), tokens [G, B, L] (after the prefix),
    gather [G, B, A] (positions whose prediction is scored), gold [G, B, A] (the token due there) and
    mask [G, B, A] (1 where a position is scored)."""

    rows: np.ndarray
    tokens: np.ndarray
    gather: np.ndarray
    gold: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class RowPlan:
    prefix: np.ndarray          # [P] tokens shared by every row, computed once (P = 0: none)
    groups: tuple[Group, ...]
    num_rows: int
    real_tokens: int            # tokens of the rows up to their last answer token (prefix counted per row)
    computed_tokens: int        # tokens the forward passes run over (prefix once, padding included)
    scored: int                 # answer positions scored

    @property
    def padding_fraction(self) -> float:
        """Padding as a fraction of the tokens computed after the prefix."""
        real_after_prefix = self.real_tokens - self.num_rows * len(self.prefix)
        after_prefix = self.computed_tokens - len(self.prefix)
        return 1.0 - real_after_prefix / max(after_prefix, 1)


def shared_prefix_length(rows: list[np.ndarray], limit: int) -> int:
    """Length of the longest token prefix common to all rows, at most ``limit``."""
    shortest = min(min(len(r) for r in rows), limit)
    first = rows[0][:shortest]
    same = np.all(np.stack([r[:shortest] == first for r in rows]), axis=0)
    return int(shortest if same.all() else np.argmin(same))


def _width(lengths: np.ndarray, max_padding: float) -> int:
    """A batch's padded length: its longest row rounded up to SHAPE_MULTIPLE tokens (fewer shapes to compile)
    where that keeps the padding within ``max_padding``, else the longest row itself."""
    longest = int(lengths.max())
    rounded = -(-longest // SHAPE_MULTIPLE) * SHAPE_MULTIPLE
    return rounded if rounded * len(lengths) - lengths.sum() <= max_padding * rounded * len(lengths) else longest


def _batches(lengths: np.ndarray, batch_size: int, bucket: bool, max_padding: float, full: int):
    """(row indices, padded length) of each batch: with ``bucket`` rows sorted by length, a batch cut where
    its padding would pass ``max_padding`` of its tokens; else data order, ``full`` tokens per row."""
    if not bucket:
        return [(np.arange(start, min(start + batch_size, len(lengths))), full)
                for start in range(0, len(lengths), batch_size)]
    batches, current = [], []
    for i in np.argsort(lengths, kind="stable"):
        candidate = current + [i]
        longest = int(lengths[i])  # the longest so far: rows come shortest first
        too_wide = longest * len(candidate) - lengths[candidate].sum() > max_padding * longest * len(candidate)
        if current and (len(current) == batch_size or too_wide):
            batches.append(np.asarray(current))
            candidate = [i]
        current = candidate
    return [(rows, _width(lengths[rows], max_padding)) for rows in batches + [np.asarray(current)]]


def plan_rows(tokens, targets, batch_size: int = 16, *, bucket: bool = True, prefix: bool = True,
              max_padding: float = 0.1) -> RowPlan:
    """Prepare rows [N, L] (right-padded tokens, ``targets`` 1 on the answer tokens) for scoring."""
    tokens, targets = np.asarray(tokens, np.int32), np.asarray(targets)
    n = tokens.shape[0]
    scored_at = [np.flatnonzero(targets[i, 1:]) for i in range(n)]  # position p predicts token p + 1
    if any(len(s) == 0 for s in scored_at):
        raise ValueError("every row needs at least one answer token to score")
    lengths = np.asarray([s[-1] + 2 for s in scored_at])  # up to and including the last answer token
    limit = min(int(s[0]) for s in scored_at)  # every scored position stays after the prefix
    p = shared_prefix_length([tokens[i, :lengths[i]] for i in range(n)], limit) if prefix and n > 1 else 0
    shapes: dict = {}
    for rows, width in _batches(lengths - p, max(1, int(batch_size)), bucket, max_padding, tokens.shape[1] - p):
        answers = max(len(scored_at[i]) for i in rows)
        shapes.setdefault((len(rows), width, answers), []).append(rows)
    groups, computed = [], p
    for (size, width, answers), members in shapes.items():
        g = len(members)
        toks = np.zeros((g, size, width), np.int32)
        gather, gold, mask = (np.zeros((g, size, answers), np.int32) for _ in range(3))
        for b, rows in enumerate(members):
            for r, i in enumerate(rows):
                row = tokens[i, p:lengths[i]]
                toks[b, r, :len(row)] = row
                at = scored_at[i] - p
                gather[b, r, :len(at)], gold[b, r, :len(at)], mask[b, r, :len(at)] = at, row[at + 1], 1
        groups.append(Group(np.stack(members), toks, gather, gold, mask))
        computed += g * size * width
    return RowPlan(tokens[0, :p].copy(), tuple(groups), n, int(lengths.sum()), int(computed),
                   int(sum(len(s) for s in scored_at)))


def working_bytes(config, plan: RowPlan, target_only: bool = True) -> int:
    """Bytes one call of :func:`exact_match_scorer` holds beyond the weights: the plan's arrays (device
    constants) and, for its largest batch, float32 activations of one layer (residual, norm, queries,
    the keys and values repeated per head, attention logits and weights, the MLP's three
    intermediates, the mask and rotary tables), the key/value cache of every layer and the logits with
    their log-softmax.
    An upper bound of what is live at once (XLA frees most of it layer by layer)."""
    c = config
    p = len(plan.prefix)
    data = plan.prefix.nbytes + sum(a.nbytes for g in plan.groups for a in (g.rows, g.tokens, g.gather, g.gold,
                                                                             g.mask))
    largest = 0
    for g in plan.groups:
        _, b, t = g.tokens.shape
        span = p + t
        layer = b * t * (2 * c.hidden_size + c.num_attention_heads * c.head_dim + 3 * c.intermediate_size) \
            + 2 * b * span * c.num_attention_heads * c.head_dim + 2 * b * c.num_attention_heads * t * span \
            + b * t * (span + 2 * c.head_dim)  # the attention mask and the rotary tables
        cache = 2 * c.num_hidden_layers * b * span * c.num_key_value_heads * c.head_dim
        logits = 2 * b * (g.gather.shape[2] if target_only else t) * c.vocab_size
        largest = max(largest, layer + cache + logits)
    return int(data + 4 * largest)


def scores_at(logits, gold, mask, eos_ids: tuple = ()):
    """(exact match [B], gold likelihood [B]) from logits [B, A, V] at the scored positions."""
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    gold_log_probs = jnp.take_along_axis(log_probs, gold[..., None], axis=-1)[..., 0]
    predicted = jnp.argmax(logits, axis=-1)
    right = (predicted == gold) | (mask == 0)
    if len(eos_ids) > 1:
        right = right | ((gold == eos_ids[0]) & jnp.isin(predicted, jnp.asarray(eos_ids)))
    count = jnp.maximum(jnp.sum(mask, axis=1), 1)
    likelihood = jnp.exp(jnp.sum(gold_log_probs * mask, axis=1) / count)
    return jnp.all(right, axis=1).astype(jnp.float32), likelihood


def prefix_cache(config, params, prefix: np.ndarray, matmul: str = "float32"):
    """The key/value cache [1, P, kv heads, hd] per layer of the prefix tokens [P] (positions 0 .. P-1)."""
    shape = (1, len(prefix), config.num_key_value_heads, config.head_dim)
    empty = [(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)) for _ in range(config.num_hidden_layers)]
    _, cache = model.apply(config, params, jnp.asarray(prefix)[None], cache=empty, index=0, last_only=True,
                           matmul=matmul)
    return cache


def logits_after_prefix(config, params, cache, tokens, gather, matmul: str = "float32", target_only: bool = True):
    """Logits [B, A, V] at positions ``gather`` [B, A] of rows ``tokens`` [B, T] that continue the cached
    prefix (``cache`` per layer [1, P, ...], or None for no prefix)."""
    batch, length = tokens.shape
    p = 0 if cache is None else cache[0][0].shape[1]
    positions = jnp.broadcast_to(p + jnp.arange(length), (batch, length))
    keep = gather if target_only else None
    if cache is None:
        logits = model.apply(config, params, tokens, positions=positions, gather=keep, matmul=matmul)
    else:
        full = model.broadcast_cache(cache, batch, length)
        logits, _ = model.apply(config, params, tokens, positions=positions, cache=full, index=p, gather=keep,
                                matmul=matmul)
    return logits if target_only else jnp.take_along_axis(logits, gather[..., None], axis=1)


def split_rows(arrays, count: int):
    """The batch arrays [G, B, ...] with B padded to a multiple of ``count`` by repeating the last row."""
    pad = -arrays[0].shape[1] % count
    return tuple(np.concatenate([a, np.repeat(a[:, -1:], pad, axis=1)], axis=1) if pad else a for a in arrays)


def exact_match_scorer(config, plan: RowPlan, eos_ids: tuple = (), *, matmul: str = "float32",
                       target_only: bool = True, likelihood: bool = False, devices=None):
    """``scores(params) -> [N]``: teacher-forced exact match of each row of ``plan``, jit-able; with
    ``likelihood``, (exact match [N], gold likelihood [N]). ``devices``: two or more devices (e.g. the CPU
    split by :func:`m2n2_jax.engine.devices.expose_cpu_devices`) share every batch's rows, the weights
    replicated (``jax.shard_map``); default one device runs the batches one after another."""
    from jax.sharding import Mesh, PartitionSpec as P

    matmul = model.resolve_matmul(matmul)
    eos_ids = tuple(int(e) for e in eos_ids)
    devices = list(devices or [])
    mesh = Mesh(np.array(devices), ("rows",)) if len(devices) > 1 else None

    def batches(params, cache, arrays):
        def one(batch):
            tokens, gather, gold, mask = batch
            logits = logits_after_prefix(config, params, cache, tokens, gather, matmul, target_only)
            return scores_at(logits, gold, mask, eos_ids)
        return jax.lax.map(one, arrays)

    def scores(params):
        cache = prefix_cache(config, params, plan.prefix, matmul) if len(plan.prefix) else None
        exact = likely = jnp.zeros(plan.num_rows, jnp.float32)
        for g in plan.groups:
            arrays = (g.tokens, g.gather, g.gold, g.mask)
            if mesh is None:
                e, l = batches(params, cache, tuple(jnp.asarray(a) for a in arrays))
            else:  # each device scores its share of every batch's rows; padding rows are dropped
                rows = g.tokens.shape[1]
                spread = jax.shard_map(batches, mesh=mesh, in_specs=(P(), P(), P(None, "rows")),
                                       out_specs=P(None, "rows"), check_vma=False)
                e, l = (x[:, :rows] for x in spread(params, cache, tuple(map(jnp.asarray,
                                                                              split_rows(arrays, len(devices))))))
            exact = exact.at[g.rows.reshape(-1)].set(e.reshape(-1))
            likely = likely.at[g.rows.reshape(-1)].set(l.reshape(-1))
        return (exact, likely) if likelihood else exact

    return scores
