"""Exactness: in reference key order the engine reproduces the authors' code.

tests/data/reference_seed42_curve.json is the test accuracy after every one of
the first 10,000 children of the authors' code (SakanaAI/natural_niches,
seed 42), measured on a machine like this one with jax 0.10.2 (docs/algorithm.md, "Reference key order").
"""
from conftest import DATA_DIR as DATA
import json
import os

import numpy as np

from m2n2_jax import M2N2Config
from m2n2_jax.engine import runner
from m2n2_jax.engine.per_child_loop import PerChildLoop



def test_reference_order_reproduces_authors_seed42_curve_for_10000_children(digits):
    with open(os.path.join(DATA, "reference_seed42_curve.json")) as f:
        expected = np.asarray(json.load(f)["test_accuracy_first_10000"])
    config = M2N2Config(key_order="reference")
    state = runner.init_runs(config, digits, [42])
    chunk = runner.make_chunk(config, digits, 1, 1)
    _, logged = chunk(state, len(expected))
    ours = np.asarray(logged["test_accuracy"][:, 0])
    # compare as counts of correct test digits (the file has 6 decimals)
    n_test = digits.info["test_size"]
    mismatch = np.nonzero(np.round(ours * n_test) != np.round(expected * n_test))[0]
    assert mismatch.size == 0, f"first mismatch at child {mismatch[0]}: {ours[mismatch[0]]} vs {expected[mismatch[0]]}"
    assert expected[-1] > 0.8  # the curve has really climbed: not a trivial match


def test_per_child_loop_and_compiled_engine_agree_exactly(digits):
    config = M2N2Config(key_order="reference", use_attraction=False)
    params, scores, curve = PerChildLoop(config, digits).run(7, 150)
    state = runner.init_runs(config, digits, [7])
    state, logged = runner.make_chunk(config, digits, 1, 1)(state, 150)
    # identical decisions and curves; parameters agree to float32 rounding (the loop jits
    # crossover and mutation separately, as the authors' code does, the engine fuses them)
    np.testing.assert_array_equal(state.archive.scores[0], scores)
    np.testing.assert_array_equal(logged["test_accuracy"][:, 0], curve)
    np.testing.assert_allclose(state.archive.params[0], params, rtol=1e-5, atol=1e-7)
