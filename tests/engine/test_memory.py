"""Memory known before work starts: keep the archive, switch to recipes (announced) or refuse in one line."""
import os

import numpy as np
import pytest

from conftest import ROOT_DIR
from m2n2_jax.engine import memory
from m2n2_jax.errors import ConfigError

GIB = memory.GIB


def test_estimate_counts_the_archive_and_the_inputs():
    dense = memory.estimate(1_000_000, "dense", num_inputs=2, runs=1, archive_size=20, batch=1)
    recipes = memory.estimate(1_000_000, "recipes", num_inputs=2, runs=1, archive_size=20, batch=1)
    assert dense.model_copies == 2 * 2 + 3 * 20 + 4 + 2 + 1 and recipes.model_copies < dense.model_copies / 4
    assert dense.bytes == memory.RUNTIME_BYTES + dense.model_copies * 4_000_000
    bigger = memory.estimate(1_000_000, "dense", num_inputs=2, runs=3, archive_size=20, batch=1)
    assert bigger.bytes - memory.RUNTIME_BYTES == pytest.approx(3 * (dense.bytes - memory.RUNTIME_BYTES), rel=0.1)


def test_a_merge_keeps_switches_or_refuses():
    said = []
    shape = dict(num_inputs=2, runs=1, archive_size=20, batch=1, say=said.append)
    assert memory.plan_merge(1000, "dense", False, room=(8 * GIB, "MemAvailable"), **shape) == "dense"
    d = 100_000_000  # dense: about 27 GiB, recipes: about 4 GiB
    assert memory.plan_merge(d, "dense", False, room=(8 * GIB, "MemAvailable"), **shape) == "recipes"
    assert len(said) == 1 and "using --archive recipes" in said[0] and "8.0 GiB are available" in said[0]
    with pytest.raises(ConfigError, match=r"needs about 2\d\.\d GiB with the dense archive .* use --archive recipes"):
        memory.plan_merge(d, "dense", True, room=(8 * GIB, "MemAvailable"), **shape)  # asked for dense: no switch
    with pytest.raises(ConfigError, match=r"4\.\d GiB with the recipes archive .* 1\.0 GiB are available \(RLIMIT_AS"):
        memory.plan_merge(d, "recipes", True, room=(1 * GIB, "RLIMIT_AS (ulimit -v)"), **shape)
    with pytest.raises(ConfigError, match="fewer --runs"):
        memory.plan_merge(d, "dense", False, recipes_possible=False, room=(8 * GIB, "MemAvailable"), **shape)


def test_evolve_refuses_naming_the_runs_that_fit():
    import re

    room = (5 * GIB, "MemAvailable")
    with pytest.raises(ConfigError, match=r"use --runs \d+\.$") as err:
        memory.check_evolve(5_000_000, 2, 10, 20, 1, room=room)
    runs = int(re.search(r"--runs (\d+)", str(err.value)).group(1))
    memory.check_evolve(5_000_000, 2, runs, 20, 1, room=room)  # the advice fits, one more run does not
    with pytest.raises(ConfigError):
        memory.check_evolve(5_000_000, 2, runs + 1, 20, 1, room=room)


def test_available_is_the_tightest_limit():
    room, which = memory.available()
    assert room is not None and room > 0 and which == "MemAvailable"  # this machine: no cgroup limit, no ulimit


PLUGIN = '''
import numpy as np
from m2n2_jax.tasks.custom import custom_task

def make(size=10_000_000):
    """A model of ``size`` parameters scored on 8 points (the sign of the sum of every 8th parameter)."""
    return custom_task("big", {"w": np.zeros(size, np.float32)},
                       lambda p: (p["w"].reshape(8, -1).sum(axis=1) > 0).astype(np.float32))
'''


def test_a_run_that_would_not_fit_under_a_memory_limit_ends_in_one_line(tmp_path):
    """Under ulimit -v (RLIMIT_AS) a 10M-parameter merge is announced on the recipe archive and completes
    (or is refused in one line), and a 10-run evolve is refused in one line, instead of dying."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"m{i}.npy"))
        np.save(paths[-1], rng.normal(size=10_000_000).astype(np.float32))
    limit = 4 * GIB  # address space: JAX maps about 1.5 GiB before any work

    import shlex
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT_DIR, os.environ.get("PYTHONPATH")]))}

    def limited(*args):  # ulimit -v in a shell that then becomes m2n2
        command = shlex.join([sys.executable, "-m", "m2n2_jax", *map(str, args)])
        return subprocess.run(["bash", "-c", f"ulimit -v {limit // 1024} && exec {command}"], capture_output=True,
                              text=True, env=env)

    merge = limited("merge", *paths, "--task", f"{plugin}:make", "--forward-passes", 2, "--cpu-devices", 1,
                    "--out", tmp_path / "o", "--quiet", "--no-checkpoint")
    assert merge.returncode in (0, 2) and "Traceback" not in merge.stderr, merge.stderr
    if merge.returncode == 0:
        assert "using --archive recipes" in merge.stderr and (tmp_path / "o" / "merged.npy").exists()
    else:
        assert merge.stderr.strip().splitlines()[-1].startswith("m2n2: error: this merge needs about")
    evolve = limited("evolve", "--task", f"{plugin}:make", "--runs", 10, "--forward-passes", 2, "--cpu-devices", 1,
                     "--out", tmp_path / "e", "--quiet")
    lines = evolve.stderr.strip().splitlines()
    assert evolve.returncode == 2 and len(lines) == 1 and "this run needs about" in lines[0], evolve.stderr
    assert "RLIMIT_AS" in lines[0] and not (tmp_path / "e").exists()


def test_the_tasks_scoring_memory_counts_once_per_scoring_device():
    base = memory.estimate(1_000_000, "recipes", num_inputs=2, devices=2)
    more = memory.estimate(1_000_000, "recipes", num_inputs=2, devices=2, scoring_bytes=300 << 20)
    assert more.bytes - base.bytes == 2 * (300 << 20) == more.task_bytes
    said = []  # a merge that fits without the task's memory is refused with it, naming the one-device run that fits
    room = (int((base.bytes + (200 << 20)) / memory.HEADROOM), "MemAvailable")
    shape = dict(num_inputs=2, runs=1, archive_size=20, batch=1, devices=2, room=room, say=said.append)
    assert memory.plan_merge(1_000_000, "recipes", True, **shape) == "recipes"
    with pytest.raises(ConfigError, match=r"with the recipes archive .* use --cpu-devices 1 \(one scoring device\)\.$"):
        memory.plan_merge(1_000_000, "recipes", True, scoring_bytes=150 << 20, **shape)  # one device fits
    with pytest.raises(ConfigError, match=r"use --archive recipes --cpu-devices 1 \(one scoring device\)\.$"):
        memory.plan_merge(1_000_000, "dense", False, scoring_bytes=150 << 20, **shape)
