"""SLERP (with its degenerate cases), crossover and noise against plain numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import crossover as xo


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


@pytest.mark.parametrize("dim", [8, 64, 19_210])
def test_parallel_and_zero_parents_take_the_linear_branch(dim):
    """x with x, 2x and 3x: exactly linear interpolation. The float32 cosine of such
    pairs lands on 1 or just below it, depending on rounding; just below, arccos
    gives about 3e-4 rad, so with the old threshold (1e-6) some of these pairs took
    the curved branch."""
    xs = np.random.default_rng(dim).normal(size=(8, dim)).astype(np.float32)
    t = jnp.array([0.25, 0.5, 0.8], jnp.float32)
    coefficients = jax.jit(jax.vmap(lambda x, y: jnp.stack(xo.slerp_coefficients(x, y, t))))
    for scale in (1, 2, 3):
        cx, cy = np.moveaxis(np.asarray(coefficients(xs, scale * xs)), 1, 0)
        np.testing.assert_array_equal(cx, np.broadcast_to(1 - t, cx.shape))  # exact: the linear branch
        np.testing.assert_array_equal(cy, np.broadcast_to(t, cy.shape))
    x = xs[0]
    np.testing.assert_allclose(xo.slerp(x, 2 * x, 0.25), 1.25 * x, rtol=1e-6)
    out = xo.slerp(np.zeros(dim, np.float32), x, 0.3)  # a zero parent has no angle
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 0.3 * x, rtol=1e-6)


def test_antiparallel_parents_give_the_nearer_parent_not_zero():
    x = np.random.default_rng(1).normal(size=64).astype(np.float32)
    for t, want in ((0.5, x), (0.3, x), (0.0, x), (0.7, -x), (1.0, -x)):
        np.testing.assert_array_equal(xo.slerp(x, -x, t), want)
    np.testing.assert_array_equal(xo.slerp(x, -3 * x, 0.5), x)
    # the authors' rule (reference order) interpolates linearly: x and -x meet at zero
    np.testing.assert_array_equal(xo.slerp(x, -x, 0.5, xo.REFERENCE_SLERP_EPS, reference=True), np.zeros(64))
    # with a split point, each side of the split takes the parent nearer its t
    key = jax.random.PRNGKey(4)
    child = xo.crossover(key, x, -x)
    k_split, k_w = jax.random.split(key)
    split, w = int(jax.random.randint(k_split, (), 0, 64)), float(jax.random.uniform(k_w))
    t = np.where(np.arange(64) < split, w, 1 - w)
    np.testing.assert_array_equal(child, np.where(t > 0.5, -x, x))


def test_nearly_parallel_parents_agree_with_numpy_slerp_on_both_sides_of_the_threshold():
    rng = np.random.default_rng(2)
    x, d = rng.normal(size=200), rng.normal(size=200)
    d -= d @ x / (x @ x) * x  # orthogonal to x
    for angle in (5e-4, 2e-3, 1e-2):  # below, just above and above the 1e-3 threshold
        y = np.cos(angle) * x + np.sin(angle) * np.linalg.norm(x) / np.linalg.norm(d) * d
        got = xo.slerp(x.astype(np.float32), y.astype(np.float32), 0.3)
        np.testing.assert_allclose(got, numpy_slerp(0.3, x, y), rtol=1e-5, atol=1e-5)


def test_split_point_zero_gives_one_minus_w_everywhere(pair):
    x, y = pair
    size = x.size
    key = next(k for k in jax.random.split(jax.random.PRNGKey(0), 500)
               if int(jax.random.randint(jax.random.split(k)[0], (), 0, size)) == 0)
    w = float(jax.random.uniform(jax.random.split(key)[1]))
    np.testing.assert_allclose(xo.crossover(key, x, y), numpy_slerp(1 - w, x, y), rtol=1e-4, atol=1e-5)


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
