"""Checkpoint and resume: an interrupted run ends exactly like an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from m2n2_jax import M2N2Config
from m2n2_jax.engine.checkpoint import CheckpointError, RunCheckpointer
from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.errors import ConfigError
from m2n2_jax.engine.chunk_loop import Interrupted
from m2n2_jax.engine.evolution import evolve

SETTINGS = dict(log_every=40)


def opts(directory=None, *, every=None, resume=False, progress=False):
    """Run options as these tests use them: chunks of 80 forward passes."""
    return RunOptions.saving(directory, every=every, resume=resume, progress=progress, chunk_forward_passes=80)


def interrupt_after(n_calls):
    calls = []

    def progress(done, total, last):
        calls.append(done)
        if len(calls) == n_calls:
            raise KeyboardInterrupt

    return progress


def test_ctrl_c_saves_and_resume_matches_uninterrupted(digits, tmp_path):
    config = M2N2Config(children_per_step=4)
    full = evolve(config, digits, [3, 4], 400, options=opts(), **SETTINGS)
    with pytest.raises(Interrupted, match="saved a checkpoint at 160 forward passes"):
        evolve(config, digits, [3, 4], 400, options=opts(str(tmp_path), every=10_000, progress=interrupt_after(2)),
               **SETTINGS)
    resumed = evolve(config, digits, [3, 4], 400, options=opts(str(tmp_path), resume=True), **SETTINGS)
    np.testing.assert_array_equal(resumed.state.archive.params, full.state.archive.params)
    np.testing.assert_array_equal(resumed.state.archive.scores, full.state.archive.scores)
    np.testing.assert_array_equal(resumed.state.key, full.state.key)
    assert resumed.forward_passes == full.forward_passes
    for name in full.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], full.metrics[name])


@pytest.mark.parametrize("method", ["sep-cma-es", "map-elites"])
def test_baseline_ctrl_c_then_resume_matches_uninterrupted(method, digits, tmp_path):
    from m2n2_jax.methods.registry import run_method

    full = run_method(method, digits, [3, 4], 400, log_every=40)
    with pytest.raises(Interrupted, match="saved a checkpoint at 160 forward passes"):
        run_method(method, digits, [3, 4], 400, log_every=40,
                   options=RunOptions.saving(str(tmp_path), every=80, progress=interrupt_after(2)))
    assert RunCheckpointer(str(tmp_path)).steps()[-1] == 160
    seen = []
    resumed = run_method(method, digits, [3, 4], 400, log_every=40, options=RunOptions.saving(
        str(tmp_path), resume=True, every=80, progress=lambda done, total, last: seen.append(done)))
    assert seen == [240, 320, 400]  # it continued from the checkpoint at 160
    assert resumed.forward_passes == full.forward_passes
    for name in full.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], full.metrics[name])
    np.testing.assert_array_equal(resumed.best, full.best)
    with pytest.raises(ConfigError, match="seeds"):
        run_method(method, digits, [3, 5], 400, log_every=40, options=RunOptions.saving(str(tmp_path), resume=True))


def test_resume_refuses_other_settings_and_missing_checkpoint(digits, tmp_path):
    config = M2N2Config(children_per_step=4)
    evolve(config, digits, [3], 160, options=opts(str(tmp_path)), **SETTINGS)
    with pytest.raises(ConfigError, match=r"config\.alpha .*seeds"):
        evolve(config.replace(alpha=0.5), digits, [4], 160, options=opts(str(tmp_path), resume=True), **SETTINGS)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evolve(config, digits, [3], 160, options=opts(str(tmp_path / "empty"), resume=True), **SETTINGS)


def test_corrupt_newest_checkpoint_falls_back_to_previous_with_warning(digits, tmp_path):
    config = M2N2Config(children_per_step=4)
    full = evolve(config, digits, [5], 320, options=opts(), **SETTINGS)
    with pytest.raises(Interrupted):
        evolve(config, digits, [5], 320, options=opts(str(tmp_path), progress=interrupt_after(3)), **SETTINGS)
    ckpt = RunCheckpointer(str(tmp_path))
    steps = ckpt.steps()
    ckpt.close()
    assert len(steps) >= 2
    newest = os.path.join(tmp_path, "checkpoints", str(steps[-1]))
    for root, _, files in os.walk(newest):  # damage every array file of the newest checkpoint
        for name in files:
            if "state" in root and not name.startswith("_"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        resumed = evolve(config, digits, [5], 320, options=opts(str(tmp_path), resume=True), **SETTINGS)
    np.testing.assert_array_equal(resumed.state.archive.params, full.state.archive.params)
    np.testing.assert_array_equal(resumed.metrics["test_accuracy"], full.metrics["test_accuracy"])


def cli(*args):
    return [sys.executable, "-m", "m2n2_jax", "evolve", "--task", "digits", "--runs", "2", "--batch", "4",
            "--forward-passes", "3200", "--log-every", "40", "--checkpoint-every", "80", "--quiet", *args]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(cli("--out", str(out)), check=True, capture_output=True)
    return out


def wait_for_checkpoint(path, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        ck = os.path.join(path, "checkpoints")
        if os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_cli_killed_or_interrupted_then_resumed_equals_uninterrupted(tmp_path, sig, uninterrupted):
    full_dir, cut_dir = uninterrupted, tmp_path / "cut"
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN, (
        "SIGINT is ignored in this process (a background job of a non-interactive shell inherits SIG_IGN), "
        "so Ctrl-C cannot be tested here; run the tests in the foreground")
    proc = subprocess.Popen(cli("--out", str(cut_dir)), stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(str(cut_dir), proc)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    # 40 synchronous checkpoint saves keep the run going for seconds after the first one
    assert proc.returncode != 0, "the run finished before the signal arrived; lengthen it"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    again = subprocess.run(cli("--out", str(cut_dir)), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to mix runs
    resumed = subprocess.run([sys.executable, "-m", "m2n2_jax", "evolve", "--resume", str(cut_dir), "--quiet"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((cut_dir / "results.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and a["forward_passes"] == b["forward_passes"]
    np.testing.assert_array_equal(np.load(full_dir / "best_models.npz")["best_vectors"],
                                  np.load(cut_dir / "best_models.npz")["best_vectors"])
    bad = subprocess.run([sys.executable, "-m", "m2n2_jax", "evolve", "--resume", str(cut_dir), "--alpha", "0.5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--alpha" in bad.stderr and "Traceback" not in bad.stderr


def test_resume_a_run_started_under_the_old_noise_default(tmp_path, monkeypatch, capsys):
    """Runs checkpointed when the default noise was 'hash' resume with it, and end as they would have."""
    import json
    import shutil

    from m2n2_jax import cli
    from m2n2_jax.methods import registry as methods

    real = methods.method_config

    def old_default(method, **overrides):
        return real(method, **{"noise": "hash", **{k: v for k, v in overrides.items() if v is not None}})

    args = ["evolve", "--forward-passes", "600", "--checkpoint-every", "200", "--log-every", "100", "--quiet"]
    monkeypatch.setattr(methods, "method_config", old_default)
    assert cli.main(args + ["--out", str(tmp_path / "old")]) == 0
    whole = json.loads((tmp_path / "old" / "results.json").read_text())
    assert whole["config"]["noise"] == "hash"
    for step in ("400", "600"):
        shutil.rmtree(tmp_path / "old" / "checkpoints" / step)
    (tmp_path / "old" / "results.json").unlink()
    monkeypatch.setattr(methods, "method_config", real)  # the current default (threefry)
    assert cli.main(["evolve", "--resume", str(tmp_path / "old"), "--quiet"]) == 0, capsys.readouterr().err
    resumed = json.loads((tmp_path / "old" / "results.json").read_text())
    assert resumed["config"]["noise"] == "hash"
    assert resumed["test_accuracy"] == whole["test_accuracy"]


def test_sigint_inside_a_checkpoint_save_stops_at_the_next_chunk(digits, tmp_path, monkeypatch, capsys):
    """Ctrl-C that lands while a checkpoint is being saved stops the run after the save, at the chunk boundary."""
    config = M2N2Config(children_per_step=4)
    full = evolve(config, digits, [3, 4], 400, options=opts(), **SETTINGS)
    real_save = RunCheckpointer.save
    saves = []

    def save_with_ctrl_c(self, step, state, meta):
        saves.append(step)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, in the middle of the save
        real_save(self, step, state, meta)

    monkeypatch.setattr(RunCheckpointer, "save", save_with_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, (
        "SIGINT is ignored or handled elsewhere in this process (a background job of a non-interactive shell "
        "inherits SIG_IGN); run the tests in the foreground")
    with pytest.raises(Interrupted, match="saved a checkpoint at 160 forward passes"):
        evolve(config, digits, [3, 4], 400, options=opts(str(tmp_path), every=80), **SETTINGS)
    assert saves == [80, 160] and "press Ctrl-C again" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(RunCheckpointer, "save", real_save)
    resumed = evolve(config, digits, [3, 4], 400, options=opts(str(tmp_path), resume=True), **SETTINGS)
    np.testing.assert_array_equal(resumed.state.archive.scores, full.state.archive.scores)
    np.testing.assert_array_equal(resumed.metrics["test_accuracy"], full.metrics["test_accuracy"])


def _toy():
    import jax.numpy as jnp

    from m2n2_jax.tasks import custom_task

    return custom_task("toy", {"w": jnp.zeros(6)}, lambda p: (p["w"] > 0).astype(jnp.float32))


def test_a_checkpoint_of_another_version_is_refused_not_called_corrupt(tmp_path):
    """Whole files that this code cannot read (another format, another state structure) are not 'corrupt':
    the message says another version wrote them and what to do, and no good checkpoint is skipped."""
    import warnings

    import jax.numpy as jnp

    config, task = M2N2Config(archive_size=3), _toy()
    evolve(config, task, [1], 40, log_every=20, options=opts(str(tmp_path)))
    with RunCheckpointer(str(tmp_path)) as ckpt, warnings.catch_warnings():
        warnings.simplefilter("error")  # no "incomplete or corrupt" warning either
        with pytest.raises(CheckpointError, match="holds a state of another structure .*another version"):
            ckpt.restore_latest({"archive": jnp.zeros((1, 3, 6)), "key": jnp.zeros((1, 2), jnp.uint32)})
    step = os.path.join(tmp_path, "checkpoints", "40", "meta")
    for name in os.listdir(step):
        path = os.path.join(step, name)
        try:
            with open(path) as f:
                meta = json.load(f)
        except ValueError:
            continue
        if isinstance(meta, dict) and "format" in meta:
            meta["format"] = 99
            with open(path, "w") as f:
                json.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"written by another version of m2n2-jax .*format 99.*resume it with"):
        evolve(config, task, [1], 40, log_every=20, options=opts(str(tmp_path), resume=True))


def test_the_cli_closes_every_checkpointer_it_opens(tmp_path, monkeypatch):
    from m2n2_jax import cli

    opened, closed = [], []
    real_init, real_close = RunCheckpointer.__init__, RunCheckpointer.close

    def init(self, *args, **kwargs):
        opened.append(self)
        real_init(self, *args, **kwargs)

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(RunCheckpointer, "__init__", init)
    monkeypatch.setattr(RunCheckpointer, "close", close)
    args = ["evolve", "--forward-passes", "40", "--log-every", "20", "--checkpoint-every", "20", "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "run")]) == 0
    os.remove(tmp_path / "run" / "results.json")
    assert cli.main(["evolve", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert len(opened) >= 3 and set(map(id, opened)) == set(map(id, closed))
