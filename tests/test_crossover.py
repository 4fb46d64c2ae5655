"""SLERP, split-point weights, crossover and noise against plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import crossover as xo


def numpy_slerp(t, x, y, eps=1e-6):
    """Per-coordinate SLERP with the angle between the whole vectors (float64)."""
    x, y, t = np.asarray(x, float), np.asarray(y, float), np.asarray(t, float)
    cos = np.clip(np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y)), -1, 1)
    omega = np.arccos(cos)
    if np.sin(omega) <= eps:
        return (1 - t) * x + t * y
    return (np.sin((1 - t) * omega) * x + np.sin(t * omega) * y) / np.sin(omega)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)


def test_slerp_endpoints(pair):
    x, y = pair
    np.testing.assert_allclose(xo.slerp(x, y, 0.0), x, atol=1e-5)
    np.testing.assert_allclose(xo.slerp(x, y, 1.0), y, atol=1e-5)


def test_slerp_matches_numpy_and_keeps_norm_of_unit_vectors(pair):
    x, y = pair
    for t in (0.1, 0.37, 0.5, 0.9):
        np.testing.assert_allclose(xo.slerp(x, y, t), numpy_slerp(t, x, y), rtol=1e-4, atol=1e-5)
    ux, uy = x / np.linalg.norm(x), y / np.linalg.norm(y)
    for t in np.linspace(0, 1, 11):
        assert abs(np.linalg.norm(xo.slerp(ux, uy, t)) - 1) < 1e-5
    # linear interpolation of the same unit vectors shrinks the norm in the middle
    assert np.linalg.norm(0.5 * ux + 0.5 * uy) < 0.9


def test_slerp_parallel_and_zero_vectors_fall_back_to_linear():
    x = np.ones(8, np.float32)
    np.testing.assert_allclose(xo.slerp(x, 2 * x, 0.25), 1.25 * x, rtol=1e-6)
    out = xo.slerp(np.zeros(8, np.float32), x, 0.3)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 0.3 * x, rtol=1e-6)


def test_split_point_weights():
    w = xo.split_point_weights(3, 0.2, 6)
    np.testing.assert_allclose(w, [0.2, 0.2, 0.2, 0.8, 0.8, 0.8], rtol=1e-6)
    np.testing.assert_allclose(xo.split_point_weights(0, 0.2, 4), [0.8] * 4, rtol=1e-6)
    np.testing.assert_allclose(xo.split_point_weights(3, 0.2, 6, use_split_point=False), [0.2] * 6)


def test_crossover_equals_per_coordinate_numpy_slerp(pair):
    x, y = pair
    key = jax.random.PRNGKey(7)
    child = xo.crossover(key, x, y)
    k_split, k_w = jax.random.split(key)
    split = int(jax.random.randint(k_split, (), 0, x.size))
    w = float(jax.random.uniform(k_w))
    t = np.where(np.arange(x.size) < split, w, 1 - w)
    np.testing.assert_allclose(child, numpy_slerp(t, x, y), rtol=1e-4, atol=1e-5)
    no_split = xo.crossover(key, x, y, use_split_point=False)
    np.testing.assert_allclose(no_split, numpy_slerp(float(jax.random.uniform(key)), x, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("noise", ["hash", "threefry"])
def test_mutation_noise_moments_and_determinism(noise):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    zeros = jnp.zeros(50_000)
    draws = np.stack([np.asarray(xo.mutate(k, zeros, 1.0, noise)) for k in keys])
    assert abs(draws.mean()) < 0.01
    assert abs(draws.std() - 1) < 0.01
    assert abs(np.mean(np.abs(draws) > 2) - 0.0455) < 0.003  # Gaussian tails
    assert abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.02  # different keys: independent
    assert abs(np.corrcoef(draws[0][:-1], draws[0][1:])[0, 1]) < 0.02  # neighbours: independent
    np.testing.assert_array_equal(draws[0], np.asarray(xo.mutate(keys[0], zeros, 1.0, noise)))
    scaled = np.asarray(xo.mutate(keys[0], zeros + 3, 0.01, noise))
    np.testing.assert_allclose(scaled, 3 + 0.01 * draws[0], rtol=1e-6)
