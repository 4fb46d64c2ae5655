"""Competition (natural niches), attraction and archive insertion.

Pure functions on one archive: ``scores`` is [P, N] (model i on datapoint j),
``capacity`` is [N]. The formulas (docs/algorithm.md):

    z_j   = sum_i S[i, j]            (a z_j of 0 counts as 1)
    F_ij  = c_j * S[i, j] / z_j**alpha
    f_i   = sum_j F_ij               (niche fitness)
    g_k   = sum_j max(0, F_kj - F_aj)  (attraction of k to parent a)

With ``subtract_worst`` (the paper's diffusion protocol for continuous
scores) S is first replaced by S[i, j] - min over the archive's members of
S[., j], so only what a member does better than the worst one counts.

Empty slots (``filled`` marks the members) are never drawn as parents and are
the first to be replaced, whatever the scores: with all-zero or negative
scores a member can be as unfit as an empty slot, and must still not be lost
to it (nor an empty slot reported or used as a parent).
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


def shift_by_worst(scores: jax.Array, filled: jax.Array) -> jax.Array:
    """Scores [P, N] minus each datapoint's worst score over the members ``filled`` [P]
    (the paper's "worst score in the population"); empty rows become 0."""
    worst = jnp.min(jnp.where(filled[:, None], scores, jnp.inf), axis=0)
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)  # no member yet
    return jnp.where(filled[:, None], scores - worst, 0.0)


def competing(scores, capacity, filled, adaptive_capacity: bool, subtract_worst: bool):
    """(scores, capacity) that competition sees: shifted by the worst member when
    ``subtract_worst``, capacity the archive's best (shifted) score when ``adaptive_capacity``."""
    if subtract_worst:
        scores = shift_by_worst(scores, filled)
    if adaptive_capacity:
        capacity = archive_capacity(scores)
    return scores, capacity


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
                   reference: bool = False, filled=None):
    """Indices (a, b) of two parents drawn from the archive.

    a is drawn proportionally to niche fitness; b by attraction to a (or by
    fitness without attraction). With ``reference=True`` the draws replicate the
    authors' code call for call, including its raw division (an all-zero
    attraction then gives NaN probabilities, for which jax.random.choice returns
    index 0). Otherwise degenerate weights fall back to fitness-proportional
    (for b) and then to uniform choice, so probabilities are never NaN.
    ``filled`` [P] (optional): only members are drawn, also by the uniform fallback.
    """
    size = scores.shape[0]
    niches = niche_matrix(scores, capacity, alpha)
    fitness = jnp.sum(niches, axis=1)
    k_first, k_second = jax.random.split(key)
    uniform = jnp.full((size,), 1.0 / size, fitness.dtype)
    if filled is not None:
        fitness = jnp.where(filled, fitness, 0.0)
        uniform = filled / jnp.sum(filled)
    p_fit = fitness / jnp.sum(fitness) if reference else proportional_probs(fitness, uniform)
    if not use_attraction:
        b, a = jax.random.choice(k_first, size, shape=(2,), p=p_fit)
        return a, b
    a = jax.random.choice(k_first, size, shape=(1,), p=p_fit)[0]
    g = attraction(niches, a)
    if filled is not None:
        g = jnp.where(filled, g, 0.0)
    p_att = g / jnp.sum(g) if reference else proportional_probs(g, p_fit)
    b = jax.random.choice(k_second, size, shape=(1,), p=p_att)[0]
    return a, b


def insert(params, scores, child, child_scores, capacity, alpha, adaptive_capacity: bool = False,
           subtract_worst: bool = False, filled=None):
    """Add one child if it is not the least fit of archive + child.

    Fitness is computed over the P members plus the child; the member with the
    lowest fitness (the first, on ties) leaves. A child whose scores or
    parameters are not all finite is worthless and never enters. With
    ``adaptive_capacity`` the capacity is :func:`archive_capacity` of the P
    members plus the child (``capacity`` is then ignored). With
    ``subtract_worst`` fitness uses :func:`shift_by_worst` over the members
    ``filled`` [P] plus the child (a worthless child is left out) and the
    capacity is taken after the shift. Given ``filled``, an empty slot is
    always the one replaced first (the lowest empty slot); without it every
    slot counts as a member (the authors' rule).

    Returns (params, scores, inserted, slot).
    """
    params, scores = jnp.asarray(params), jnp.asarray(scores)
    size = scores.shape[0]
    valid = jnp.all(jnp.isfinite(child_scores)) & jnp.all(jnp.isfinite(child))
    child_scores = jnp.where(valid, child_scores, 0).astype(scores.dtype)
    extended = jnp.concatenate([scores, child_scores[None]], axis=0)
    if subtract_worst:
        members = jnp.concatenate([jnp.asarray(filled, bool), valid[None]])
        competed, capacity = competing(extended, capacity, members, adaptive_capacity, True)
        # empty slots (and a worthless child) at -inf: an empty slot is replaced first
        fitness = jnp.where(members, niche_fitness(competed, capacity, alpha), -jnp.inf)
    else:
        if adaptive_capacity:
            capacity = archive_capacity(extended)
        fitness = niche_fitness(extended, capacity, alpha)
        fitness = fitness.at[size].set(jnp.where(valid, fitness[size], -jnp.inf))
        if filled is not None:  # an empty slot goes first, even before a member of fitness 0
            fitness = jnp.where(jnp.append(jnp.asarray(filled, bool), True), fitness, -jnp.inf)
    worst = jnp.argmin(fitness)
    inserted = (worst < size) & valid
    slot = jnp.minimum(worst, size - 1)
    params = params.at[slot].set(jnp.where(inserted, child, params[slot]))
    scores = scores.at[slot].set(jnp.where(inserted, child_scores, scores[slot]))
    return params, scores, inserted, slot
