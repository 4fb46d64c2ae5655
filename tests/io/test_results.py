"""results.py's summaries against plain-Python references."""
import math
import statistics

import numpy as np
import pytest

from m2n2_jax.io.results import first_reaching, mean_and_sem


def test_mean_and_sem_match_the_statistics_module():
    curves = np.random.default_rng(0).random((7, 5))
    mean, sem = mean_and_sem(curves)
    for j in range(5):
        column = [float(v) for v in curves[:, j]]
        assert mean[j] == pytest.approx(statistics.fmean(column), rel=1e-12)
        assert sem[j] == pytest.approx(statistics.stdev(column) / math.sqrt(7), rel=1e-12)  # ddof = 1


def test_one_run_has_zero_standard_error_and_lists_are_accepted():
    mean, sem = mean_and_sem([[0.5, 0.75]])
    np.testing.assert_array_equal(mean, [0.5, 0.75])
    np.testing.assert_array_equal(sem, [0, 0])
    mean, sem = mean_and_sem([[1, 2], [3, 6]])
    np.testing.assert_allclose(mean, [2, 4])
    np.testing.assert_allclose(sem, [1, 2])  # stdev of (1, 3) = sqrt(2), / sqrt(2)


def test_first_reaching():
    fps, curve = [100, 200, 300, 400], [0.5, 0.79, 0.8, 0.9]
    assert first_reaching(fps, curve, 0.80) == 300  # reaching means >=, not >
    assert first_reaching(fps, curve, 0.5) == 100
    assert first_reaching(fps, curve, 0.95) is None
    assert first_reaching(fps, [0.9, 0.1, 0.95], 0.85) == 100  # the first time, even if it drops later
    assert isinstance(first_reaching(np.array(fps), np.array(curve), 0.8), int)
