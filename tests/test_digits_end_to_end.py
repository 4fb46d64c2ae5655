"""A short real digits run improves clearly over its seeds; the CLI writes its files."""
import json
import os

import numpy as np

from m2n2_jax import evolve, method_config
from conftest import run_cli


def test_short_digits_run_improves_clearly_over_seeds(digits):
    res = evolve(method_config("m2n2", children_per_step=2), digits, [0, 1, 2], 4000, log_every=1000)
    acc = res.metrics["test_accuracy"]
    assert res.forward_passes == [0, 1000, 2000, 3000, 4000]
    assert np.all(acc[:, 0] < 0.35)  # random N(0, 0.01^2) seeds
    assert np.all(acc[:, -1] > acc[:, 0] + 0.2) and acc[:, -1].mean() > 0.5, acc[:, -1]
    assert np.all(res.metrics["best_train_score"][:, -1] >= res.metrics["best_train_score"][:, 0])


def test_cli_evolve_writes_results_and_plot(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("evolve", "--task", "digits", "--method", "ga", "--runs", "2", "--forward-passes", "400",
                   "--batch", "4", "--seed", "3", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "results.json").read_text())
    assert rec["method"] == "ga" and rec["task"] == "digits" and rec["seeds"] == [3, 4]
    assert rec["forward_passes"][-1] == 400 and rec["forward_passes"] == sorted(rec["forward_passes"])
    assert len(rec["test_accuracy"]) == 2 and len(rec["test_accuracy"][0]) == len(rec["forward_passes"])
    assert rec["final_test_accuracy"] == [c[-1] for c in rec["test_accuracy"]]
    assert rec["config"]["alpha"] == 0.0 and rec["config"]["use_attraction"] is False
    assert rec["wall_seconds"] > 0
    # the CLI splits a CPU into one device per core (at most 8) and shards 2 runs x 4 children over
    # them (docs/multi-device.md): whole runs per device when that keeps as many devices busy, else
    # the 8 children of a step; devices that cannot share the work evenly stay idle. Worked out by hand:
    expected = {1: (1, None), 2: (2, "runs"), 3: (2, "runs"), 4: (4, "children"), 5: (4, "children"),
                6: (4, "children"), 7: (4, "children"), 8: (8, "children")}
    assert (rec["execution"]["devices"], rec["execution"]["sharding"]) == expected[min(os.cpu_count() or 1, 8)]
    assert rec["execution"]["eval_batch_size"] == 1
    assert (out / "curves.png").stat().st_size > 1000
    assert np.load(out / "best_models.npz")["best_vectors"].shape == (2, 19210)
    again = run_cli("evolve", "--forward-passes", "400", "--out", str(out), "--quiet")
    assert again.returncode == 2 and "--overwrite" in again.stderr
