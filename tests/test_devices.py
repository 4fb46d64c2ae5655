"""Children sharded over 8 simulated CPU devices give the archive of one device."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_eight_simulated_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_check.py")], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device_count"] == 8
    # identical decisions: every archive score and every logged test accuracy
    assert out["scores_equal"] and out["curves_equal"], out
    # parameters agree to float32 rounding (XLA fuses the replicated SLERP arithmetic
    # differently in the partitioned program; differences are ulp-sized and never cascade)
    assert out["params_max_abs_diff"] <= 1e-6 * max(1.0, out["params_max_abs"]), out
    assert min(out["final_accuracy"]) > 0.3  # the runs really evolved
