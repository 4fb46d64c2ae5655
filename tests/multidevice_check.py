"""Run by test_devices.py under XLA_FLAGS=--xla_force_host_platform_device_count=8.

Runs the same two runs on 1 device and on 8 simulated devices in this process
and prints a JSON comparison.
"""
import json

import jax
import numpy as np

from m2n2_jax import M2N2Config, evolve
from m2n2_jax.tasks import digits_task

task = digits_task()
config = M2N2Config(children_per_step=4)
out = {"device_count": jax.device_count()}
results = {}
for n in (1, 8):
    res = evolve(config, task, [1, 2], 800, log_every=80, eval_batch_size=1, devices=jax.devices()[:n])
    results[n] = res
a, b = results[1], results[8]
out["scores_equal"] = bool(np.array_equal(a.state.archive.scores, b.state.archive.scores))
out["curves_equal"] = bool(np.array_equal(a.metrics["test_accuracy"], b.metrics["test_accuracy"]))
out["params_max_abs_diff"] = float(np.max(np.abs(np.asarray(a.state.archive.params) - np.asarray(b.state.archive.params))))
out["params_max_abs"] = float(np.max(np.abs(np.asarray(a.state.archive.params))))
out["final_accuracy"] = np.asarray(a.metrics["test_accuracy"][:, -1]).tolist()
print(json.dumps(out))
