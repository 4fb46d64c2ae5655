"""Budget planning: log points that do not depend on the budget's divisors, and chunks that cover it."""
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import M2N2Config, evolve
from m2n2_jax.engine.budget import TARGET_LOGS, plan_budget
from m2n2_jax.engine.chunk_loop import Interrupted, RunOptions
from m2n2_jax.errors import ConfigError
from m2n2_jax.tasks import custom_task

PRIMES = (4999, 49_999, 99_991)


def reference_log_points(forward_passes, batch, log_every=None):
    """A plain loop: log every K steps (K = steps // 500, at least 1, unless given) and at the last step."""
    steps = forward_passes // batch
    every = max(1, steps // 500) if log_every is None else min(log_every // batch, steps)
    points, step = [0], 0
    while step < steps:
        step = min(step + every, steps)
        points.append(step * batch)
    return points


@pytest.mark.parametrize("forward_passes,batch,log_every", [
    (50_000, 1, None), (5000, 1, None), (10_000, 4, None), (400, 4, 40), (1000, 1, 300), (999, 1, None),
    *[(p, 1, None) for p in PRIMES], (4999, 1, 100), (2 * 49_999, 2, None), (7, 7, None), (60, 20, 1000),
])
def test_log_points_match_a_plain_loop(forward_passes, batch, log_every):
    plan = plan_budget(forward_passes, batch, log_every)
    assert plan.log_points == reference_log_points(forward_passes, batch, log_every)


@pytest.mark.parametrize("forward_passes", PRIMES)
def test_a_prime_budget_logs_about_500_times_not_after_every_child(forward_passes):
    plan = plan_budget(forward_passes, 1)
    assert TARGET_LOGS <= plan.num_logs <= 2 * TARGET_LOGS, plan.num_logs  # not one per child
    assert plan.log_points[-1] == forward_passes
    gaps = np.diff(plan.log_points)
    assert np.all(gaps[:-1] == plan.log_every) and 0 < gaps[-1] <= plan.log_every


@pytest.mark.parametrize("forward_passes,batch,log_every,chunk_fp", [
    (50_000, 1, None, 2000), (49_999, 1, None, 2000), (4999, 1, 100, 2000), (400, 4, 40, 80), (99_991, 1, None, 7),
    (5000, 1, None, 2000), (1009, 1, 10, 60),
])
def test_chunks_cover_the_budget_from_any_resume_point(forward_passes, batch, log_every, chunk_fp):
    plan = plan_budget(forward_passes, batch, log_every)
    for done in sorted({0, 1, plan.full_logs // 2, plan.full_logs, plan.num_logs}):
        chunks = plan.chunks(done, chunk_fp)
        assert sum(n for n, _ in chunks) == plan.num_logs - done
        assert plan.fp_at(done) + sum(n * s * batch for n, s in chunks) == forward_passes
        assert all(n * s * batch < chunk_fp + plan.log_every for n, s in chunks)
        assert len(set(chunks)) <= 3  # at most three compiled programs


def test_bad_budgets_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="multiple of the batch of 4 children per step; use 1000 or 1004"):
        plan_budget(1001, 4)
    with pytest.raises(ConfigError, match="--log-every 6 must be a positive multiple of the batch"):
        plan_budget(1000, 4, 6)
    with pytest.raises(ConfigError, match="positive integer"):
        plan_budget(0, 1)


def toy_task():
    """16 datapoints: datapoint j is solved when coordinate j is positive (a fast task for the engine)."""
    return custom_task("toy", {"w": jnp.zeros(16)}, lambda p: (p["w"] > 0).astype(jnp.float32),
                       lambda p: {"test_accuracy": jnp.mean(p["w"] > 0)})


def test_a_prime_budget_runs_with_few_log_points_and_resumes_exactly(tmp_path):
    """4,999 forward passes: about 500 log points (not 4,999 one-child chunks), the last after the short
    final interval; a run interrupted and resumed across that interval ends as an uninterrupted one."""
    task, config = toy_task(), M2N2Config(archive_size=4, mutation_std=0.1)
    full = evolve(config, task, [1, 2], 4999)
    assert full.forward_passes == reference_log_points(4999, 1)
    assert full.metrics["test_accuracy"].shape == (2, len(full.forward_passes))
    calls = []

    def stop_late(done, total, last):
        calls.append(done)
        if done >= 4500:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        evolve(config, task, [1, 2], 4999, options=RunOptions.saving(str(tmp_path), progress=stop_late,
                                                                      chunk_forward_passes=500))
    resumed = evolve(config, task, [1, 2], 4999, options=RunOptions.saving(str(tmp_path), resume=True,
                                                                           chunk_forward_passes=500))
    assert resumed.forward_passes == full.forward_passes
    for name in full.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], full.metrics[name])
    np.testing.assert_array_equal(resumed.state.archive.params, full.state.archive.params)
