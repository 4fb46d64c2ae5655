"""Sums over whole models and many datapoints stay accurate at 30M elements (against float64).

A float32 sum taken one element after another stalls once the total dwarfs the terms: the sum
of 30M ones stops at 2^24 (44 % off; ``jax.ops.segment_sum`` does just that). The SLERP angle
of a crossover, the recipe archive's Gram matrices and niche fitness must not: all-positive
terms (uniform in [0, 1)) are the hard case, and the bound is float32 rounding of the result.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.algorithm import niches, recipes

SIZE = 30_000_000


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    x = rng.random(SIZE, dtype=np.float32)
    y = 0.5 * x + rng.random(SIZE, dtype=np.float32)
    return x, y


def slerp_reference(x, y, t):
    """SLERP coefficients from float64 dot products (numpy)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    cos = (x64 @ y64) / np.sqrt((x64 @ x64) * (y64 @ y64))
    omega = np.arccos(cos)
    return np.sin((1 - t) * omega) / np.sin(omega), np.sin(t * omega) / np.sin(omega)


def test_slerp_angle_of_30m_parameters_matches_float64(pair):
    x, y = pair
    t = np.array([0.3, 0.7])
    cx, cy = jax.jit(xo.slerp_coefficients)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(t, jnp.float32))
    want_x, want_y = slerp_reference(x, y, t)
    np.testing.assert_allclose(np.asarray(cx), want_x, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(cy), want_y, rtol=2e-5)


def test_recipe_inner_products_of_30m_parameters_match_float64(pair):
    x, y = pair
    bank = recipes.SeedBank.build(np.stack([x, y]))
    a = recipes.Recipe(np.array([0, SIZE // 3, SIZE]), np.array([[0.25, 0.75], [1.0, -0.5]]))
    b = recipes.seed_recipe(1, 2, SIZE)
    da = np.concatenate([0.25 * x[:SIZE // 3].astype(np.float64) + 0.75 * y[:SIZE // 3],
                         x[SIZE // 3:].astype(np.float64) - 0.5 * y[SIZE // 3:]])
    db = y.astype(np.float64)
    np.testing.assert_allclose(recipes.inner_products(bank, a, b), (da @ da, db @ db, da @ db), rtol=1e-9)


def test_niche_fitness_over_15m_datapoints_matches_float64(pair):
    """Two members' scores on 15M datapoints: 30M scores, each member's fitness a sum of 15M terms."""
    x, y = (v[:SIZE // 2] for v in pair)
    scores = np.stack([x, y])
    capacity = np.ones(SIZE // 2, np.float32)
    got = np.asarray(jax.jit(niches.niche_fitness)(jnp.asarray(scores), jnp.asarray(capacity), 1.0))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    share = x64 / (x64 + y64)
    np.testing.assert_allclose(got, [share.sum(), SIZE // 2 - share.sum()], rtol=1e-6)
    mean = np.asarray(jax.jit(lambda s: jnp.mean(s, axis=1))(jnp.asarray(scores)))
    np.testing.assert_allclose(mean, [x64.mean(), y64.mean()], rtol=1e-6)
