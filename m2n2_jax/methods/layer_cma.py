"""CMA-ES over per-layer merge coefficients: the paper's LLM baseline.

The paper's CMA-ES merges two LLMs by SLERP with one mixing coefficient per
transformer layer (32 for Llama-2-7B; 30 for SmolLM2-135M) and searches those
coefficients with CMA-ES on the same evaluation budget as M2N2. Here:

- :func:`layer_groups` maps each coordinate of a flattened Llama-family model
  to its layer; embeddings, the final norm and the LM head form one extra group
  (``rest="one"``, the default: 31 coefficients for SmolLM2) or one group each
  (``rest="own"``).
- :func:`cma_es_layer_slerp` searches one SLERP coefficient per group. Inside
  a group every tensor is merged by mergekit's per-tensor SLERP
  (:func:`m2n2_jax.methods.classic_merges.slerp`) with the group's coefficient,
  as mergekit applies a per-layer ``t``. More than two seeds are merged as a
  chain, ``slerp(... slerp(seed_0, seed_1, t_1) ..., seed_{K-1}, t_{K-1})``,
  with K - 1 coefficients per group.
- :func:`cma_es_search` is the loop under both (evosax CMA-ES, minimising minus
  the mean score), shared with the tiny-model pipeline's per-tensor
  task-arithmetic search (:func:`cma_es_task_arithmetic`).

The budget counts fitness evaluations (one merged model scored on the fitness
set is one); whole generations run while they fit, and the last, partial one
evaluates only its first members, so exactly ``budget`` children are scored.
Runs are deterministic given ``seed``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.engine.budget import plan_budget
from m2n2_jax.engine.search import ENGINE, THREE_WAY, KeyChain, OnHost, Scorer, run_search
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods import classic_merges
from m2n2_jax.methods.evosax_es import EvosaxSearch

_LAYER = re.compile(r"^layers_(\d+)$")


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The best merge seen: its vector, coefficients, mean score and the (evaluations, best so far) curve."""

    vector: jax.Array
    coefficients: np.ndarray
    best_score: float
    evaluated: int
    curve: list


def layer_groups(llama_config, layout, rest: str = "one") -> jax.Array:
    """Group id [D] of each coordinate of a flattened Llama (``m2n2_jax.llm.model`` params).

    Leaves under ``layers_i`` get group i; the others (``embed_tokens``,
    ``norm``, ``lm_head``) get group L = num_hidden_layers (``rest="one"``) or
    L, L + 1, ... in the order they first appear in the vector (``rest="own"``).
    """
    if rest not in ("one", "own"):
        raise ConfigError(f"rest must be 'one' or 'own' (got {rest!r}): one extra group, or one group per leaf.")
    num_layers = int(llama_config.num_hidden_layers)
    group_of_leaf, extra = {}, {}
    names = _top_names(layout)
    for i in layout.order:
        name = names[i]
        match = _LAYER.match(name)
        if match:
            layer = int(match.group(1))
            if layer >= num_layers:
                raise ConfigError(f"leaf {name} is beyond num_hidden_layers = {num_layers}; "
                                  "pass the config of this model.")
            group_of_leaf[i] = layer
        else:
            group_of_leaf[i] = num_layers if rest == "one" else num_layers + extra.setdefault(name, len(extra))
    sizes = [int(np.prod(layout.shapes[i])) for i in layout.order]
    groups = [group_of_leaf[i] for i in layout.order]
    return jnp.repeat(jnp.asarray(groups), jnp.asarray(sizes), total_repeat_length=sum(sizes))


def _top_names(layout) -> list[str]:
    """The top-level key of each leaf (``layers_3``, ``embed_tokens``, ...), in leaf order."""
    skeleton = jax.tree_util.tree_unflatten(layout.treedef, range(len(layout.shapes)))
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(skeleton)[0]:
        key = path[0]
        names.append(str(getattr(key, "key", getattr(key, "name", key))))
    return names


def tensor_groups(tensor_ids, groups) -> np.ndarray:
    """The group [T] of each tensor; refuses a tensor split across groups."""
    tensor_ids, groups = np.asarray(tensor_ids), np.asarray(groups)
    num_tensors = int(tensor_ids.max()) + 1
    first = np.full(num_tensors, -1)
    first[tensor_ids[::-1]] = groups[::-1]
    if np.any(first[tensor_ids] != groups):
        bad = int(tensor_ids[np.argmax(first[tensor_ids] != groups)])
        raise ConfigError(f"tensor {bad} lies in more than one group; group whole tensors (e.g. by layer).")
    return first


def layer_slerp(seeds, coefficients, groups, tensor_ids=None) -> jax.Array:
    """The merge for coefficients [G, K - 1]: per-tensor SLERP, chained over the seeds, t from the tensor's group.

    Without ``tensor_ids`` each group is SLERPed as one tensor. Coefficients are
    clipped to [0, 1].
    """
    if tensor_ids is None:
        tensor_ids = groups
    tg = jnp.asarray(tensor_groups(tensor_ids, groups))
    return _layer_slerp(seeds, coefficients, tensor_ids, tg)


@jax.jit
def _layer_slerp(seeds, coefficients, tensor_ids, tg):
    t = jnp.clip(jnp.asarray(coefficients), 0, 1).reshape(-1, seeds.shape[0] - 1)
    x = seeds[0]
    for k in range(1, seeds.shape[0]):
        x = classic_merges.slerp(x, seeds[k], t[tg, k - 1], tensor_ids, num_tensors=tg.shape[0])
    return x


def cma_es_search(merge: Callable, score: Callable, start, budget: int, seed: int, *,
                  population: int, sigma: float) -> SearchResult:
    """evosax CMA-ES maximising mean(score(merge(w))) over w of ``start``'s shape, for ``budget`` evaluations.

    Runs through the one search loop (:func:`m2n2_jax.engine.search.run_search`, host loop, one
    run unbatched as :class:`~m2n2_jax.engine.search.OnHost`): the population is genomes
    (coefficients of ``start``'s shape) and the scorer decodes each into its merge. The
    run's key is PRNGKey(seed) (also evosax's init key), split in three at every generation.
    The last, partial generation scores only the members the budget allows (the others count
    as never evaluated: -inf, so they cannot become the best).
    """
    if budget < 1 or population < 2:
        raise ConfigError(f"CMA-ES needs a budget >= 1 and a population >= 2 (got {budget}, {population}).")
    start = jnp.asarray(start, jnp.float32)
    es = _strategy(population, start.shape)
    params = es.default_params.replace(std_init=sigma)
    evaluated = []

    def decoded_score(w):
        if len(evaluated) == budget:
            return np.full(1, -np.inf, np.float32)
        evaluated.append(1)
        return np.asarray(jnp.mean(score(merge(jnp.asarray(w)))), np.float32)[None]

    generations = -(-budget // population)
    plan = plan_budget(generations * population, population, population)
    out = run_search(OnHost(EvosaxSearch(es)), params, Scorer(decoded_score, jittable=False), [seed], start[None], plan,
                     seed_scores=np.full((1, 1), -np.inf, np.float32), keys=KeyChain(ENGINE.start, THREE_WAY.step))
    best = np.asarray(out.best[0]).reshape(start.shape)
    curve = [(min(fp, budget), float(s)) for fp, s in zip(out.forward_passes[1:], out.metrics["best_train_score"][0, 1:])]
    return SearchResult(merge(jnp.asarray(best)), best, curve[-1][1], budget, curve)


@functools.lru_cache(maxsize=16)
def _strategy(population: int, shape: tuple):
    """One evosax CMA-ES per (population, shape)."""
    from evosax.algorithms import CMA_ES

    return CMA_ES(population_size=population, solution=jnp.zeros(shape, jnp.float32))


def cma_es_layer_slerp(seeds, groups, score: Callable, budget: int, seed: int, *, tensor_ids=None,
                       population: int = 25, sigma: float = 0.3, start: float = 0.5) -> SearchResult:
    """CMA-ES over one SLERP coefficient per group (and per extra seed): the paper's per-layer baseline.

    seeds [K, D] (K >= 2); groups [D] (e.g. :func:`layer_groups`); ``score(x)``
    returns per-datapoint scores (or one number) for a flat vector x, higher is
    better; ``tensor_ids`` [D] makes the SLERP per tensor inside each group
    (``classic_merges.leaf_groups(layout)``). Population 25 is the paper's;
    coefficients start at ``start`` with step size ``sigma`` and are clipped to
    [0, 1] when merged.
    """
    seeds = jnp.asarray(seeds)
    if seeds.ndim != 2 or seeds.shape[0] < 2:
        raise ConfigError(f"seeds must be [K, D] with K >= 2 (got shape {seeds.shape}).")
    merge, num_groups = layer_slerp_decoder(seeds, groups, tensor_ids)
    return cma_es_search(merge, score, jnp.full((num_groups, seeds.shape[0] - 1), start), budget, seed,
                         population=population, sigma=sigma)


def cma_es_task_arithmetic(base, seeds, groups, score: Callable, budget: int, seed: int, *,
                           population: int = 16, sigma: float = 0.3, start: float = 0.5) -> SearchResult:
    """CMA-ES over [G, K] task-arithmetic coefficients (the tiny-model pipeline's per-tensor baseline)."""
    num_groups = int(np.asarray(groups).max()) + 1
    merge = jax.jit(lambda w: classic_merges.grouped_task_arithmetic(base, seeds, groups, w))
    return cma_es_search(merge, score, jnp.full((num_groups, seeds.shape[0]), start), budget, seed,
                         population=population, sigma=sigma)


def layer_slerp_decoder(seeds, groups, tensor_ids=None):
    """(decode, number of groups): ``decode(coefficients [G, K - 1]) -> merged vector`` is :func:`layer_slerp`
    with the tensors' groups computed once, for searches that decode many genomes (or decode one again later)."""
    seeds = jnp.asarray(seeds)
    tensor_ids = groups if tensor_ids is None else tensor_ids
    tg = jnp.asarray(tensor_groups(tensor_ids, groups))
    tensor_ids = jnp.asarray(tensor_ids)
    return (lambda w: _layer_slerp(seeds, jnp.asarray(w), tensor_ids, tg)), int(np.asarray(groups).max()) + 1
