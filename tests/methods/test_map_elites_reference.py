"""MAP-Elites against the authors' code.

tests/data/reference_map_elites_seed42_curve.json holds the test accuracy after
each of the first 5,000 children of the authors' MAP-Elites (SakanaAI/natural_niches,
seed 42, from scratch), measured on this project's machine (see its "about").
"""
from conftest import DATA_DIR as DATA
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm import crossover as xo
from m2n2_jax.methods import map_elites



def test_reference_order_reproduces_authors_map_elites_seed42_curve_for_2000_children(digits):
    with open(os.path.join(DATA, "reference_map_elites_seed42_curve.json")) as f:
        expected = np.asarray(json.load(f)["test_accuracy"][:2000])
    res = map_elites.run_map_elites(digits, [42], len(expected), log_every=1, key_order="reference")
    ours = res.metrics["test_accuracy"][0, 1:]  # index 0 is the grid holding only the two seeds
    n_test = digits.info["test_size"]  # compare counts of correct test digits (the file has 6 decimals)
    mismatch = np.nonzero(np.round(ours * n_test) != np.round(expected * n_test))[0]
    assert mismatch.size == 0, f"first mismatch at child {mismatch[0]}: {ours[mismatch[0]]} vs {expected[mismatch[0]]}"
    assert len(set(expected.tolist())) > 15 and expected[-1] > 0.45  # the curve moves: not a trivial match


def _grid(rng, cells=100, occupied=12, scale=1.0):
    occ = np.zeros(cells, bool)
    occ[rng.choice(cells, occupied, replace=False)] = True
    quality = np.where(occ, rng.random(cells) * scale, 0.0).astype(np.float32)
    return map_elites.GridState(params=jnp.zeros((cells, 1)), quality=jnp.asarray(quality),
                                occupied=jnp.asarray(occ), key=jax.random.PRNGKey(0),
                                inserted=jnp.zeros((), jnp.int32))


def _authors_draw(key, state):
    """The authors' sample_parents: jax.random.choice over the occupied cells in row-major order."""
    occ = np.asarray(state.occupied)
    cells = np.flatnonzero(occ)
    flat_q = jnp.asarray(state.quality)[jnp.asarray(occ)]
    picked = jax.random.choice(key, flat_q.size, shape=(2,), p=flat_q / jnp.sum(flat_q),
                               replace=bool(jnp.sum(flat_q) < 2))
    return cells[np.asarray(picked)]


def test_parent_draw_is_the_authors_choice_call_with_and_without_replacement():
    rng = np.random.default_rng(0)
    select = jax.jit(map_elites.select_parents)
    kinds = {True: 0, False: 0}
    for i in range(80):
        occupied = (2, 5, 13, 40)[i % 4]  # few distinct sizes: the authors' call compiles once per size
        state = _grid(rng, occupied=occupied, scale=float(rng.choice([0.1, 0.5, 1.0])))
        key = jax.random.PRNGKey(i)
        np.testing.assert_array_equal(np.asarray(select(key, state)), _authors_draw(key, state), err_msg=str(i))
        kinds[bool(jnp.sum(state.quality) < 2)] += 1
    assert min(kinds.values()) > 20  # both branches exercised


def test_parents_are_distinct_once_the_qualities_sum_to_two():
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    draw = jax.jit(jax.vmap(map_elites.select_parents, in_axes=(0, None)))
    rich = _grid(np.random.default_rng(1), occupied=3).replace(quality=jnp.zeros(100).at[jnp.asarray([3, 50, 97])]
                                                                 .set(jnp.asarray([0.9, 0.8, 0.4])))
    rich = rich.replace(occupied=rich.quality > 0)
    pairs = np.asarray(draw(keys, rich))
    assert np.all(pairs[:, 0] != pairs[:, 1]) and set(pairs.ravel()) == {3, 50, 97}
    # first parent of a draw without replacement: probability proportional to quality
    p = np.asarray([0.9, 0.8, 0.4]) / 2.1
    freq = np.asarray([np.mean(pairs[:, 0] == c) for c in (3, 50, 97)])
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / len(keys)))
    poor = rich.replace(quality=rich.quality / 2)  # sum 1.05 < 2: independent draws, repeats allowed
    pairs = np.asarray(draw(keys, poor))
    same = np.mean(pairs[:, 0] == pairs[:, 1])
    assert abs(same - np.sum(p ** 2)) < 4 * np.sqrt(0.25 / len(keys)), same


def test_all_zero_qualities_fall_back_to_uniform_occupied_cells():
    state = _grid(np.random.default_rng(2), occupied=4, scale=0.0)
    pairs = np.asarray(jax.vmap(map_elites.select_parents, in_axes=(0, None))(
        jax.random.split(jax.random.PRNGKey(3), 400), state))
    assert set(pairs.ravel()) == set(np.flatnonzero(np.asarray(state.occupied)).tolist())


def test_child_is_slerp_of_first_parent_towards_second_plus_threefry_noise():
    rng = np.random.default_rng(4)
    state = _grid(rng, occupied=6).replace(params=jnp.asarray(rng.normal(size=(100, 50)), jnp.float32))
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    a, b = np.asarray(map_elites.select_parents(keys[0], state))
    expected = xo.crossover(keys[1], state.params[a], state.params[b]) + jax.random.normal(keys[2], (50,)) * 0.01
    child = map_elites.make_child(state, keys, 0.01)
    np.testing.assert_allclose(np.asarray(child), np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_reference_key_order_splits_the_run_key_into_four():
    key = jax.random.PRNGKey(9)
    nxt, keys = map_elites.child_keys(key, "reference")
    k1, k2, k3, k4 = jax.random.split(key, 4)
    np.testing.assert_array_equal(np.asarray(keys), np.asarray(jnp.stack([k1, k2, k3])))
    np.testing.assert_array_equal(np.asarray(nxt), np.asarray(k4))
