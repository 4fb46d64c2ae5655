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
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from m2n2_jax import evolve, method_config
from test_llm_merge import specialists  # noqa: F401 (the two tiny Llamas, a module fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 600  # seconds per launch: a hang fails the test instead of CI
COMMON = dict(forward_passes=1500, log_every=50, checkpoint_every=500, chunk_forward_passes=250, num_processes=2)
MODES = {"runs": dict(seeds=[42, 43, 44, 45], batch=1), "children": dict(seeds=[42], batch=2)}


def _isolation() -> list:
    """The command prefix of a private network namespace with only loopback, or [] where not allowed."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] if probe.returncode == 0 else []


def launch(tmp, name, jobs, kill_marker=None, argv=None):
    """Run the worker's jobs (or the command ``argv``) in two processes; (launcher report, process logs)."""
    log_dir = os.path.join(tmp, f"logs-{name}")
    os.makedirs(log_dir)
    jobs_path = os.path.join(tmp, f"{name}.json")
    with open(jobs_path, "w") as f:
        json.dump(jobs, f)
    argv = argv or [sys.executable, os.path.join(HERE, "multihost_worker.py"), jobs_path, "{port}", "{pid}"]
    spec = {"num_processes": 2, "timeout": TIMEOUT, "kill_marker": kill_marker, "log_dir": log_dir, "argv": argv}
    spec_path = os.path.join(tmp, f"{name}-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = _isolation() + [sys.executable, os.path.join(HERE, "multihost_launch.py"), spec_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT + 60)
    logs = "".join(open(os.path.join(log_dir, n)).read()[-3000:] for n in sorted(os.listdir(log_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    return json.loads(proc.stdout.strip().splitlines()[-1]), logs


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
    """One-process references, the two-process runs of both modes, and a killed-and-resumed run."""
    tmp = str(tmp_path_factory.mktemp("multihost"))
    out = {"isolated": bool(_isolation())}
    for mode, settings in MODES.items():
        res = evolve(method_config("m2n2", children_per_step=settings["batch"]), digits, settings["seeds"],
                     COMMON["forward_passes"], log_every=COMMON["log_every"], devices=jax.devices()[:1])
        out[f"reference-{mode}"] = {"test_accuracy": res.metrics["test_accuracy"],
                                    "best_train_score": res.metrics["best_train_score"],
                                    "scores": np.asarray(res.state.archive.scores),
                                    "params": np.asarray(res.state.archive.params), "keys": np.asarray(res.state.key)}
    jobs = [job(tmp, mode, mode, count_bytes=out["isolated"]) for mode in MODES]
    out["launch"], out["logs"] = launch(tmp, "both-modes", jobs)
    for mode in MODES:
        out[mode] = [load(os.path.join(tmp, mode), p) for p in (0, 1)]
    # kill both processes after the checkpoint at 500 forward passes per run, then resume
    killed = job(tmp, "runs", "killed", stall_at=1000)
    out["kill"], _ = launch(tmp, "kill", [killed], kill_marker=os.path.join(killed["dir"], "stalled"))
    out["steps_after_kill"] = sorted(int(n) for n in os.listdir(os.path.join(killed["dir"], "checkpoints"))
                                     if n.isdigit())
    out["resume"], _ = launch(tmp, "resume", [{**killed, "stall_at": None, "resume": True}])
    out["resumed"] = [load(killed["dir"], p) for p in (0, 1)]
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
    assert_same_run(got0, runs[f"reference-{mode}"], params_rtol=1e-6)
    accuracy = got0["test_accuracy"]
    assert accuracy.shape == (len(MODES[mode]["seeds"]), COMMON["forward_passes"] // COMMON["log_every"] + 1)
    assert np.all(accuracy[:, -1] > accuracy[:, 0] + 0.1)  # the runs really evolved


def test_killed_in_both_processes_resumes_to_the_same_result(runs):
    assert runs["kill"]["killed"] and not runs["kill"]["timed_out"]
    assert runs["steps_after_kill"] == [500]  # killed mid-run, after one checkpoint
    assert runs["resume"]["returncodes"] == [0, 0]
    (_, got0), (_, got1) = runs["resumed"]
    for name in got0:
        np.testing.assert_array_equal(got0[name], got1[name], err_msg=name)
    uninterrupted = runs["runs"][0][1]
    for name in got0:  # exactly the uninterrupted two-process run
        np.testing.assert_array_equal(got0[name], uninterrupted[name], err_msg=name)
    assert_same_run(got0, runs["reference-runs"], params_rtol=1e-6)


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
    path = os.environ.get("M2N2_MULTIHOST_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    scores_bytes = MODES["children"]["batch"] * 1437 * 4  # [M, N] float32 scores of the step's children
    children = min(report["children"]["bytes_per_step"])
    assert children >= scores_bytes / 2  # each process at least sends its half of the scores
    assert min(report["runs"]["bytes_per_step"]) < children  # runs mode exchanges only per-chunk metrics


def test_llm_recipe_merge_from_the_cli_in_two_processes(specialists, tmp_path, capsys):
    """`m2n2 merge --archive recipes` of two tiny Llamas: two processes each score one child per step
    and write one results.json, the same as one process's (curves, merged weights)."""
    from m2n2_jax import cli, model_files
    from m2n2_jax.llm.task import exact_match_task

    s = specialists
    common = ["merge", s["dirs"]["first"], s["dirs"]["last"], "--task", "llm-exact-match",
              "--task-arg", f"data={s['fit']}", "--task-arg", f"test_data={s['test']}", "--archive", "recipes",
              "--forward-passes", "40", "--batch", "2", "--quiet", "--cpu-devices", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(common + ["--out", str(one)]) == 0, capsys.readouterr().err
    report, logs = launch(str(tmp_path), "llm", None, argv=[
        sys.executable, "-m", "m2n2_jax", *common, "--out", str(two), "--coordinator", "127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", "{pid}"])
    assert report["returncodes"] == [0, 0], logs
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    timing = {"wall_seconds", "forward_passes_per_second", "environment", "peak_rss_mb"}
    assert {k for k in a if a[k] != b.get(k)} <= timing, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
    task = exact_match_task(s["dirs"]["first"], s["fit"], s["test"])
    np.testing.assert_array_equal(model_files.load_model(str(one / "merged"), task.layout),
                                  model_files.load_model(str(two / "merged"), task.layout))
    assert b["merged"]["train_score"] >= max(m["train_score"] for m in b["models"])

