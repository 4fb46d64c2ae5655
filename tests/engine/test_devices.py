"""Several simulated CPU devices give the archives of one device, in both sharding modes."""
from conftest import TESTS_DIR as HERE
import json
import os
import subprocess
import sys

import jax
import pytest

from m2n2_jax.engine.devices import device_mesh



def test_eight_simulated_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_check.py")], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 8
    assert (out["children"]["mesh_axis"], out["children"]["mesh_size"]) == ("children", 8)
    assert (out["runs"]["mesh_axis"], out["runs"]["mesh_size"]) == ("runs", 4)
    for mode in ("children", "runs"):
        got = out[mode]
        # identical decisions: every archive score and every logged test accuracy
        assert got["scores_equal"] and got["curves_equal"], (mode, got)
        # parameters agree to float32 rounding (XLA may fuse the SLERP arithmetic differently
        # in a partitioned program; differences are ulp-sized and never cascade)
        assert got["params_max_abs_diff"] <= 1e-6 * max(1.0, got["params_max_abs"]), (mode, got)
        gains = [b - a for a, b in zip(got["first_accuracy"], got["final_accuracy"])]
        assert min(gains) > 0.1, (mode, got)  # every run really evolved


@pytest.mark.parametrize("devices,runs,batch,want", [
    (1, 10, 1, None),
    (2, 10, 1, ("runs", 2)),
    (8, 10, 1, ("runs", 5)),      # 5 devices keep the runs busy; children could not use more
    (8, 2, 4, ("children", 8)),   # few runs, many children: shard the children
    (8, 3, 1, ("runs", 3)),
    (8, 1, 16, ("children", 8)),
])
def test_device_mesh_prefers_runs_when_it_uses_as_many_devices(devices, runs, batch, want):
    fake = [jax.devices()[0]] * devices  # only the count matters for the choice
    if want is None:
        assert device_mesh(fake, runs, batch) is None
        return
    with pytest.warns(UserWarning) if want[1] < devices else _nothing():
        mesh = device_mesh(fake, runs, batch)
    assert (mesh.axis_names[0], mesh.devices.size) == want


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
