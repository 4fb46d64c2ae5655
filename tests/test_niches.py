"""Competition, attraction and insertion against plain numpy loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import niches


def loop_fitness(S, c, alpha):
    P, N = S.shape
    F = np.zeros((P, N))
    for j in range(N):
        z = sum(S[i, j] for i in range(P))
        z = 1.0 if z == 0 else z
        for i in range(P):
            F[i, j] = c[j] * S[i, j] / z ** alpha
    return F, F.sum(axis=1)


def random_scores(seed, P=7, N=30, binary=True):
    rng = np.random.default_rng(seed)
    S = (rng.random((P, N)) < 0.4).astype(np.float32) if binary else rng.random((P, N)).astype(np.float32)
    S[:, :3] = 0  # datapoints nobody solves
    S[-1] = 0  # an empty slot
    return S


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("binary", [True, False])
def test_niche_fitness_and_attraction_match_loops(alpha, binary):
    S = random_scores(1, binary=binary)
    c = np.random.default_rng(2).uniform(0.5, 2.0, S.shape[1]).astype(np.float32)
    F, f = loop_fitness(S, c, alpha)
    np.testing.assert_allclose(niches.niche_matrix(S, c, alpha), F, rtol=1e-5)
    np.testing.assert_allclose(niches.niche_fitness(S, c, alpha), f, rtol=1e-5)
    for a in range(S.shape[0]):
        g = [sum(max(0.0, F[k, j] - F[a, j]) for j in range(S.shape[1])) for k in range(S.shape[0])]
        np.testing.assert_allclose(niches.attraction(jnp.asarray(F, jnp.float32), a), g, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_total_score():
    S = random_scores(3)
    np.testing.assert_allclose(niches.niche_fitness(S, np.ones(S.shape[1], np.float32), 0.0), S.sum(1))


def test_rare_skill_beats_common_skill_under_competition():
    # model 0 solves 4 points everybody solves; model 1 solves 2 points nobody else does
    S = np.zeros((4, 6), np.float32)
    S[:, :4] = 1
    S[1, :4] = 0
    S[1, 4:] = 1
    f = niches.niche_fitness(S, np.ones(6, np.float32), 1.0)
    assert f[1] > f[0]
    assert niches.niche_fitness(S, np.ones(6, np.float32), 0.0)[1] < niches.niche_fitness(S, np.ones(6, np.float32), 0.0)[0]


def test_insert_replaces_the_least_fit_member():
    S = random_scores(4, P=5)
    c = np.ones(S.shape[1], np.float32)
    params = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    child_scores = np.ones(S.shape[1], np.float32)  # solves everything
    ext = np.concatenate([S, child_scores[None]])
    worst = int(np.argmin(loop_fitness(ext, c, 1.0)[1]))
    new_p, new_s, inserted, slot = niches.insert(params, S, np.full(3, -1.0, np.float32), child_scores, c, 1.0)
    assert bool(inserted) and int(slot) == worst
    np.testing.assert_array_equal(np.asarray(new_p)[worst], [-1, -1, -1])
    np.testing.assert_array_equal(np.asarray(new_s)[worst], child_scores)
    keep = [i for i in range(5) if i != worst]
    np.testing.assert_array_equal(np.asarray(new_p)[keep], params[keep])


def test_child_worse_than_all_is_rejected():
    S = np.ones((4, 10), np.float32)
    params = np.ones((4, 2), np.float32)
    new_p, new_s, inserted, _ = niches.insert(params, S, np.zeros(2, np.float32), np.zeros(10, np.float32),
                                              np.ones(10, np.float32), 1.0)
    assert not bool(inserted)
    np.testing.assert_array_equal(new_p, params)
    np.testing.assert_array_equal(new_s, S)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_child_never_enters(bad):
    S = np.zeros((3, 5), np.float32)  # empty archive: any valid child would enter
    child_scores = np.ones(5, np.float32)
    child_scores[2] = bad
    _, new_s, inserted, _ = niches.insert(np.zeros((3, 2), np.float32), S, np.ones(2, np.float32), child_scores,
                                          np.ones(5, np.float32), 1.0)
    assert not bool(inserted) and np.all(np.isfinite(new_s))
    _, _, inserted, _ = niches.insert(np.zeros((3, 2), np.float32), S, np.array([np.nan, 1], np.float32),
                                      np.ones(5, np.float32), np.ones(5, np.float32), 1.0)
    assert not bool(inserted)


def test_degenerate_probabilities_never_nan():
    P, N = 5, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 50)
    cap = np.ones(N, np.float32)
    # all fitness zero: empty archive
    S0 = np.zeros((P, N), np.float32)
    # attraction all zero: member 0 dominates everyone
    S1 = np.zeros((P, N), np.float32)
    S1[0] = 1
    S1[1, :3] = 1
    for S in (S0, S1):
        for use_attraction in (True, False):
            ab = jax.vmap(lambda k: niches.select_parents(k, S, cap, 1.0, use_attraction))(keys)
            a, b = map(np.asarray, ab)
            assert np.all((a >= 0) & (a < P)) and np.all((b >= 0) & (b < P))
    # with S1, parent A must be a scoring member and B falls back to fitness-proportional
    a, b = map(np.asarray, jax.vmap(lambda k: niches.select_parents(k, S1, cap, 1.0, True))(keys))
    assert set(a) <= {0, 1} and set(b) <= {0, 1}
    p = niches.proportional_probs(jnp.zeros(4), jnp.full(4, 0.25))
    assert np.all(np.isfinite(p)) and np.isclose(float(p.sum()), 1)


def test_parent_frequencies_follow_fitness_and_attraction():
    S = np.zeros((3, 4), np.float32)
    S[0, :2] = 1  # A-candidate: solves points 0, 1
    S[1, 2] = 1   # solves point 2, complementary to member 0
    S[2, :2] = 1  # duplicate of member 0
    cap = np.ones(4, np.float32)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    a, b = map(np.asarray, jax.vmap(lambda k: niches.select_parents(k, S, cap, 1.0, True))(keys))
    f = loop_fitness(S, cap, 1.0)[1]
    np.testing.assert_allclose(np.bincount(a, minlength=3) / 4000, f / f.sum(), atol=0.03)
    # when A is member 0 or 2, only member 1 is attractive
    assert np.all(b[a != 1] == 1)
