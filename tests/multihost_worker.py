"""One process of the two-process runs of test_multihost.py.

    python tests/multihost_worker.py JOBS.json PORT PROCESS_ID

Starts JAX's multi-controller runtime (m2n2_jax.engine.distributed.initialize with the
coordinator on 127.0.0.1:PORT); for each job of the list in JOBS.json runs
``evolve`` over the devices of all processes with checkpoints in JOB["dir"], and writes what it got to
JOB["dir"]/result-PROCESS_ID.npz (archives, keys, curves) and .json (how it ran). With JOB["stall_at"], process 0 writes
JOB["dir"]/stalled once that many forward passes per run are done and waits to be
killed. When JOB["count_bytes"], process 0 also records the loopback interface's
transmitted bytes at every chunk (meaningful in a network namespace of its own).
"""
import json
import os
import sys
import time

job_path, port, process_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(job_path) as f:
    jobs = json.load(f)

from m2n2_jax.engine import distributed  # noqa: E402 (before JAX starts its backend)

distributed.initialize(f"127.0.0.1:{port}", jobs[0]["num_processes"], process_id, timeout_seconds=120)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from m2n2_jax import RunOptions, evolve, method_config  # noqa: E402
from m2n2_jax.tasks import get_task  # noqa: E402


def loopback_tx_bytes() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[8])
    return -1


def run(job):
    trace = []

    def progress(done, total, last):
        trace.append([int(done), loopback_tx_bytes() if job.get("count_bytes") else -1])
        if job.get("stall_at") and done >= job["stall_at"]:
            open(os.path.join(job["dir"], "stalled"), "w").close()
            time.sleep(3600)

    res = evolve(method_config("m2n2", children_per_step=job["batch"]), get_task("digits"), job["seeds"],
                 job["forward_passes"], log_every=job["log_every"],
                 options=RunOptions.saving(job["dir"], every=job["checkpoint_every"], resume=job.get("resume", False),
                                           devices=jax.devices(), chunk_forward_passes=job["chunk_forward_passes"],
                                           progress=progress))
    archive = res.state.archive
    np.savez(os.path.join(job["dir"], f"result-{process_id}.npz"), scores=np.asarray(archive.scores),
             params=np.asarray(archive.params), keys=np.asarray(res.state.key),
             test_accuracy=np.asarray(res.metrics["test_accuracy"]), best_train_score=np.asarray(res.metrics["best_train_score"]))
    info = {"process_id": jax.process_index(), "process_count": jax.process_count(), "global_devices": jax.device_count(),
            "local_devices": jax.local_device_count(), "execution": res.extra["execution"], "forward_passes": res.forward_passes,
            "trace": trace}
    with open(os.path.join(job["dir"], f"result-{process_id}.json"), "w") as f:
        json.dump(info, f)


for job in jobs:
    run(job)
