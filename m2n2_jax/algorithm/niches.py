"""Competition (natural niches), attraction and archive insertion.

Pure functions on one archive: ``scores`` is [P, N] (model i on datapoint j),
``capacity`` is [N]. The formulas (docs/algorithm.md):

    z_j   = sum_i S[i, j]            (a z_j of 0 counts as 1)
    F_ij  = c_j * S[i, j] / z_j**alpha
    f_i   = sum_j F_ij               (niche fitness)
    g_k   = sum_j max(0, F_kj - F_aj)  (attraction of k to parent a)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def niche_matrix(scores: jax.Array, capacity: jax.Array, alpha) -> jax.Array:
    """F[i, j]: the share of datapoint j's capacity that model i earns.

    ``alpha`` may be traced (a sweep without recompiling). alpha = 1 divides by
    z itself: XLA turns a division by ``z ** alpha`` into a multiplication by
    ``z ** -alpha``, which rounds differently from the reference's plain division.
    """
    z = jnp.sum(scores, axis=0)
    z = jnp.where(z > 0, z, 1)
    z = jnp.where(alpha == 1, z, z ** alpha)
    return capacity * scores / z


def archive_capacity(scores: jax.Array) -> jax.Array:
    """The paper's capacity for continuous scores: c_j = max_i S[i, j], or 1
    where no model scores above zero. For 0/1 scores this is 1 everywhere."""
    best = jnp.max(scores, axis=0)
    return jnp.where(best > 0, best, 1.0)


def niche_fitness(scores: jax.Array, capacity: jax.Array, alpha) -> jax.Array:
    """f[i] = sum_j F[i, j]; alpha = 0 gives the plain total score."""
    return jnp.sum(niche_matrix(scores, capacity, alpha), axis=1)


def attraction(niches: jax.Array, parent: jax.Array) -> jax.Array:
    """g[k]: how much model k earns on the datapoints where ``parent`` is weak."""
    return jnp.sum(jnp.maximum(0, niches - niches[parent]), axis=1)


def proportional_probs(weights: jax.Array, fallback: jax.Array) -> jax.Array:
    """weights / sum(weights), or ``fallback`` where that is undefined (all zero)."""
    total = jnp.sum(weights)
    ok = jnp.isfinite(total) & (total > 0)
    return jnp.where(ok, weights / jnp.where(ok, total, 1), fallback)


def select_parents(key, scores, capacity, alpha, use_attraction: bool,
                   reference: bool = False):
    """Indices (a, b) of two parents drawn from the archive.

    a is drawn proportionally to niche fitness; b by attraction to a (or by
    fitness without attraction). With ``reference=True`` the draws replicate the
    authors' code call for call, including its raw division (an all-zero
    attraction then gives NaN probabilities, for which jax.random.choice returns
    index 0). Otherwise degenerate weights fall back to fitness-proportional
    (for b) and then to uniform choice, so probabilities are never NaN.
    """
    size = scores.shape[0]
    niches = niche_matrix(scores, capacity, alpha)
    fitness = jnp.sum(niches, axis=1)
    k_first, k_second = jax.random.split(key)
    uniform = jnp.full((size,), 1.0 / size, fitness.dtype)
    p_fit = fitness / jnp.sum(fitness) if reference else proportional_probs(fitness, uniform)
    if not use_attraction:
        b, a = jax.random.choice(k_first, size, shape=(2,), p=p_fit)
        return a, b
    a = jax.random.choice(k_first, size, shape=(1,), p=p_fit)[0]
    g = attraction(niches, a)
    p_att = g / jnp.sum(g) if reference else proportional_probs(g, p_fit)
    b = jax.random.choice(k_second, size, shape=(1,), p=p_att)[0]
    return a, b


def insert(params, scores, child, child_scores, capacity, alpha, adaptive_capacity: bool = False):
    """Add one child if it is not the least fit of archive + child.

    Fitness is computed over the P members plus the child; the member with the
    lowest fitness (the first, on ties) leaves. A child whose scores or
    parameters are not all finite is worthless and never enters. With
    ``adaptive_capacity`` the capacity is :func:`archive_capacity` of the P
    members plus the child (``capacity`` is then ignored).

    Returns (params, scores, inserted, slot).
    """
    params, scores = jnp.asarray(params), jnp.asarray(scores)
    size = scores.shape[0]
    valid = jnp.all(jnp.isfinite(child_scores)) & jnp.all(jnp.isfinite(child))
    child_scores = jnp.where(valid, child_scores, 0).astype(scores.dtype)
    extended = jnp.concatenate([scores, child_scores[None]], axis=0)
    if adaptive_capacity:
        capacity = archive_capacity(extended)
    fitness = niche_fitness(extended, capacity, alpha)
    fitness = fitness.at[size].set(jnp.where(valid, fitness[size], -jnp.inf))
    worst = jnp.argmin(fitness)
    inserted = worst < size
    slot = jnp.minimum(worst, size - 1)
    params = params.at[slot].set(jnp.where(inserted, child, params[slot]))
    scores = scores.at[slot].set(jnp.where(inserted, child_scores, scores[slot]))
    return params, scores, inserted, slot
