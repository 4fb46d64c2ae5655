"""Two processes on 127.0.0.1 under JAX's multi-controller runtime against one process.

Each process sees one CPU device, so the mesh over ``jax.devices()`` spans both
processes: in "runs" mode each process advances two of four runs; in
"children" mode each scores one of the two children of every step and the
scores are all-gathered over gloo. The launcher (multihost_launch.py) picks a
free port on 127.0.0.1, enforces a time limit and, where the machine allows
(``unshare -rn``), runs both processes in a network namespace of their own
that has only the loopback interface: nothing can leave it, and its byte
counter measures exactly the traffic between the processes.
"""
from conftest import TESTS_DIR as HERE
import json
import os
import sys

import jax
import numpy as np
import pytest

from m2n2_jax import RunOptions, evolve, method_config
from multihost_launch import isolated, run_processes

COMMON = dict(forward_passes=1000, log_every=50, checkpoint_every=500, chunk_forward_passes=250, num_processes=2)
MODES = {"runs": dict(seeds=[42, 43, 44, 45], batch=1), "children": dict(seeds=[42], batch=2)}


def launch(tmp, name, jobs, kill_marker=None, argv=None):
    """Run the worker's jobs (or the command ``argv``) in two processes; (launcher report, process logs)."""
    jobs_path = os.path.join(tmp, f"{name}.json")
    with open(jobs_path, "w") as f:
        json.dump(jobs, f)
    argv = argv or [sys.executable, os.path.join(HERE, "multihost_worker.py"), jobs_path, "{port}", "{pid}"]
    return run_processes(tmp, name, argv, kill_marker=kill_marker)


def job(tmp, mode, name, **extra):
    directory = os.path.join(tmp, name)
    os.makedirs(directory, exist_ok=True)
    return {**COMMON, **MODES[mode], "dir": directory, **extra}


def load(directory, process_id):
    with open(os.path.join(directory, f"result-{process_id}.json")) as f:
        info = json.load(f)
    return info, dict(np.load(os.path.join(directory, f"result-{process_id}.npz")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """One-process references and the two-process runs of both modes ("runs" killed and resumed)."""
    tmp = str(tmp_path_factory.mktemp("multihost"))
    out = {"isolated": isolated()}
    for mode, settings in MODES.items():
        res = evolve(method_config("m2n2", children_per_step=settings["batch"]), digits, settings["seeds"],
                     COMMON["forward_passes"], log_every=COMMON["log_every"],
                     options=RunOptions(devices=jax.devices()[:1]))
        out[f"reference-{mode}"] = {"test_accuracy": res.metrics["test_accuracy"],
                                    "best_train_score": res.metrics["best_train_score"],
                                    "scores": np.asarray(res.state.archive.scores),
                                    "params": np.asarray(res.state.archive.params), "keys": np.asarray(res.state.key)}
    # "runs": killed in both processes after the checkpoint at 500 forward passes per run, then resumed
    # in two new processes together with the "children" run
    runs = job(tmp, "runs", "runs", stall_at=750)
    out["kill"], _ = launch(tmp, "kill", [runs], kill_marker=os.path.join(runs["dir"], "stalled"))
    out["steps_after_kill"] = sorted(int(n) for n in os.listdir(os.path.join(runs["dir"], "checkpoints"))
                                     if n.isdigit())
    jobs = [{**runs, "stall_at": None, "resume": True, "count_bytes": out["isolated"]},
            job(tmp, "children", "children", count_bytes=out["isolated"])]
    out["launch"], out["logs"] = launch(tmp, "resume-and-children", jobs)
    for mode in MODES:
        out[mode] = [load(os.path.join(tmp, mode), p) for p in (0, 1)]
    return out


def assert_same_run(got: dict, ref: dict, params_rtol: float):
    for name in ("test_accuracy", "best_train_score", "scores", "keys"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)  # bit for bit
    np.testing.assert_allclose(got["params"], ref["params"], rtol=0, atol=params_rtol)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_give_the_one_process_run(runs, mode):
    assert runs["launch"]["returncodes"] == [0, 0], runs["logs"]
    (info0, got0), (info1, got1) = runs[mode]
    assert (info0["process_count"], info0["global_devices"], info0["local_devices"]) == (2, 2, 1)
    assert info0["execution"]["sharding"] == mode and info0["execution"]["devices"] == 2
    for name in got0:  # every process ends with the same, complete results
        np.testing.assert_array_equal(got0[name], got1[name], err_msg=name)
    ref = runs[f"reference-{mode}"]
    _report(f"{mode}_params_max_abs_diff", float(np.max(np.abs(got0["params"] - ref["params"]))))
    assert_same_run(got0, ref, params_rtol=1e-6)
    accuracy = got0["test_accuracy"]
    assert accuracy.shape == (len(MODES[mode]["seeds"]), COMMON["forward_passes"] // COMMON["log_every"] + 1)
    assert np.mean(accuracy[:, -1] - accuracy[:, 0]) > 0.1  # the runs really evolved


def test_killed_in_both_processes_resumes_to_the_same_result(runs):
    """The "runs" run above was killed mid-run (SIGKILL to both processes, no chance to save) and
    resumed; test_two_processes_give_the_one_process_run[runs] checks it ends where one process does."""
    assert runs["kill"]["killed"] and not runs["kill"]["timed_out"]
    assert runs["steps_after_kill"] == [500]  # killed mid-run, after one checkpoint
    info, _ = runs["runs"][0]
    assert info["trace"][0][0] == 750  # the resumed processes started from the checkpoint, not from scratch


def test_traffic_between_processes_per_step(runs):
    """Bytes on the private loopback interface per step, from chunks without a checkpoint save."""
    if not runs["isolated"]:
        pytest.skip("no private network namespace here (unshare -rn); traffic not measured")
    report = {}
    for mode in MODES:
        trace = runs[mode][0][0]["trace"]  # [forward passes per run done, loopback bytes sent] per chunk
        steps = COMMON["chunk_forward_passes"] // MODES[mode]["batch"]
        clean = [b1 - b0 for (f0, b0), (f1, b1) in zip(trace, trace[1:]) if f1 % COMMON["checkpoint_every"] == 0]
        report[mode] = {"bytes_per_step": [round(b / steps, 1) for b in clean], "steps_per_chunk": steps}
    _report("traffic", report)
    scores_bytes = MODES["children"]["batch"] * 1437 * 4  # [M, N] float32 scores of the step's children
    children = report["children"]["bytes_per_step"]
    assert min(children) >= scores_bytes / 2  # each process at least sends its half of the scores
    # ... and not much more: the children themselves [M, D] (154 KB here) must not cross
    assert max(children) < 2 * scores_bytes
    assert max(report["runs"]["bytes_per_step"]) < min(children)  # runs mode: only per-chunk metrics


def _report(name, value):
    """Add a measured figure to the JSON file named by $M2N2_MULTIHOST_REPORT (for docs/multi-device.md)."""
    path = os.environ.get("M2N2_MULTIHOST_REPORT")
    if not path:
        return
    data = json.load(open(path)) if os.path.exists(path) else {}
    data[name] = value
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def test_processes_started_with_different_seeds_stop_with_one_line(tmp_path):
    report, logs = launch(str(tmp_path), "seeds", None, argv=[
        sys.executable, "-m", "m2n2_jax", "evolve", "--seed", "4{pid}", "--forward-passes", "100", "--quiet",
        "--cpu-devices", "1", "--out", str(tmp_path / "out"), "--coordinator", "127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", "{pid}"])
    assert report["returncodes"] == [2, 2], logs
    lines = [line for line in logs.splitlines() if line.startswith("m2n2: error:")]
    assert len(lines) == 2 and all("disagree on seeds (process 1 vs process 0)" in line for line in lines), logs
    assert "settings" not in lines[0] and not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--coordinator", "127.0.0.1:1"], "needs --coordinator, --num-processes and --process-id together "
                                       "(missing --num-processes, --process-id)"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id 2 must be in 0..1"),
])
def test_incomplete_coordinator_options_end_in_one_line(argv, needle, tmp_path, capsys):
    from m2n2_jax import cli

    assert cli.main(["evolve", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_one_process_helpers_are_plain():
    """With one process the helpers change nothing: a local copy, a plain loop, the error itself."""
    from m2n2_jax.engine import distributed
    from m2n2_jax.errors import ConfigError

    tree = {"a": jax.numpy.arange(3.0), "b": np.ones(2, np.int32)}
    got = distributed.host_tree(tree)
    assert all(isinstance(v, np.ndarray) for v in got.values()) and got["a"].tolist() == [0.0, 1.0, 2.0]
    assert distributed.local_tree(tree) is tree
    squares = distributed.map_over_processes(lambda x: np.asarray([x * x]), [1, 2, 3], np.zeros(1))
    assert squares.tolist() == [[1], [4], [9]]
    with pytest.raises(ConfigError, match="bad"):
        distributed.check_agreement({"x": 1}, ConfigError("bad"))
    distributed.check_agreement({"x": 1})
    assert distributed.digest({"a": [1, np.arange(2)]}) == distributed.digest({"a": [1, np.arange(2)]})
    assert distributed.digest(np.arange(2, dtype=np.int32)) != distributed.digest(np.arange(2, dtype=np.int64))
