"""Run by test_devices.py under XLA_FLAGS=--xla_force_host_platform_device_count=8.

Runs the same evolutions on 1 device and on 8 simulated devices in this process
and prints a JSON comparison for both ways of using several devices:
"children" (2 runs x 4 children per step sharded over 8 devices) and "runs"
(4 runs at B = 1, one run per device on 4 devices).
"""
import json

import jax
import numpy as np

from m2n2_jax import M2N2Config, RunOptions, evolve
from m2n2_jax.engine.devices import device_mesh
from m2n2_jax.tasks import digits_task

task = digits_task()
out = {"device_count": jax.device_count()}
for mode, batch, seeds, budget in (("children", 4, [1, 2], 800), ("runs", 1, [1, 2, 3, 4], 2000)):
    config = M2N2Config(children_per_step=batch)
    mesh = device_mesh(jax.devices(), len(seeds), batch)
    results = {n: evolve(config, task, seeds, budget, log_every=budget // 10,
                         options=RunOptions(eval_batch_size=1, devices=jax.devices()[:n]))
               for n in (1, 8)}
    a, b = results[1], results[8]
    out[mode] = {
        "mesh_axis": mesh.axis_names[0], "mesh_size": int(mesh.devices.size),
        "scores_equal": bool(np.array_equal(a.state.archive.scores, b.state.archive.scores)),
        "curves_equal": bool(np.array_equal(a.metrics["test_accuracy"], b.metrics["test_accuracy"])),
        "params_max_abs_diff": float(np.max(np.abs(np.asarray(a.state.archive.params) -
                                                   np.asarray(b.state.archive.params)))),
        "params_max_abs": float(np.max(np.abs(np.asarray(a.state.archive.params)))),
        "first_accuracy": np.asarray(a.metrics["test_accuracy"][:, 0]).tolist(),
        "final_accuracy": np.asarray(a.metrics["test_accuracy"][:, -1]).tolist(),
    }
print(json.dumps(out))
