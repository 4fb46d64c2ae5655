"""Competition, attraction and insertion against plain numpy loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import niches


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
    """All fitness zero (an empty archive) or all attraction zero (member 0 dominates):
    the engine falls back to uniform / fitness-proportional draws. The reference
    path divides by zero and jax.random.choice then always returns index 0, so the
    spread of the draws tells the two apart."""
    P, N = 5, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    cap = np.ones(N, np.float32)
    S0 = np.zeros((P, N), np.float32)
    S1 = np.zeros((P, N), np.float32)
    S1[0] = 1
    S1[1, :3] = 1

    def draws(S, use_attraction, reference=False):
        ab = jax.vmap(lambda k: niches.select_parents(k, S, cap, 1.0, use_attraction, reference))(keys)
        return map(np.asarray, ab)

    for use_attraction in (True, False):
        a, b = draws(S0, use_attraction)  # uniform over all five members
        assert set(a) == set(b) == set(range(P))
    a, b = draws(S1, True)
    # f = (6.5, 1.5, 0, 0, 0): A is 0 or 1; g is zero for A = 0, so B falls back to f
    assert set(a) == {0, 1} and set(b[a == 0]) == {0, 1}
    assert set(b[a == 1]) == {0}  # A = 1: only member 0 attracts
    np.testing.assert_allclose(np.mean(b[a == 0] == 1), 1.5 / 8, atol=0.08)  # about 170 draws
    ref_a, ref_b = draws(S1, True, reference=True)
    assert set(ref_b[ref_a == 0]) == {0}  # the reference's NaN probabilities: always index 0
    p = niches.proportional_probs(jnp.zeros(4), jnp.full(4, 0.25))
    assert np.all(np.isfinite(p)) and np.isclose(float(p.sum()), 1)


def loop_insert(S, child_scores, c, alpha):
    """Plain-Python insertion: index of the first least-fit of members + child (P = the child)."""
    ext = np.concatenate([S, child_scores[None]])
    fitness = loop_fitness(ext, c, alpha)[1]
    return int(np.argmin(fitness)), fitness


def test_a_child_that_ties_the_worst_member_replaces_it():
    # members 0..2 solve disjoint single points; the child solves a fresh point: all tie at 1
    S = np.zeros((3, 4), np.float32)
    S[0, 0] = S[1, 1] = S[2, 2] = 1
    child = np.array([0, 0, 0, 1], np.float32)
    c = np.ones(4, np.float32)
    worst, fitness = loop_insert(S, child, c, 1.0)
    assert len(set(fitness)) == 1 and worst == 0  # a four-way tie: the first member leaves
    params = np.arange(3, dtype=np.float32)[:, None]
    new_p, new_s, inserted, slot = niches.insert(params, S, np.array([9.0], np.float32), child, c, 1.0)
    assert bool(inserted) and int(slot) == 0
    np.testing.assert_array_equal(np.asarray(new_p)[:, 0], [9, 1, 2])
    np.testing.assert_array_equal(np.asarray(new_s)[0], child)


def test_of_several_tied_weakest_members_the_first_leaves():
    S = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]], np.float32)  # 1 and 3 tie
    child = np.array([1, 1, 1, 1], np.float32)
    c = np.ones(4, np.float32)
    worst, fitness = loop_insert(S, child, c, 1.0)
    assert fitness[1] == fitness[3] == min(fitness) and worst == 1
    _, new_s, inserted, slot = niches.insert(np.zeros((4, 1), np.float32), S, np.ones(1, np.float32), child, c, 1.0)
    assert bool(inserted) and int(slot) == worst
    np.testing.assert_array_equal(np.asarray(new_s)[3], S[3])


def test_a_zero_score_child_fills_an_empty_slot():
    S = np.zeros((4, 5), np.float32)
    S[0, :2] = 1  # one member; slots 1..3 are empty (zero scores)
    child = np.zeros(5, np.float32)
    c = np.ones(5, np.float32)
    worst, _ = loop_insert(S, child, c, 1.0)
    assert worst == 1  # ties with the empty slots at fitness 0: the first empty slot takes it
    new_p, _, inserted, slot = niches.insert(np.zeros((4, 2), np.float32), S, np.full(2, 5.0, np.float32), child,
                                             c, 1.0)
    assert bool(inserted) and int(slot) == 1
    np.testing.assert_array_equal(np.asarray(new_p)[1], [5, 5])
