"""Start N processes of one multi-host run on this machine and wait for them (used by test_multihost.py).

    python tests/multihost_launch.py SPEC.json

SPEC: {"num_processes": N, "argv": [...] (the command of every process; "{port}" and
"{pid}" are filled in), "timeout": seconds, "kill_marker": a file whose appearance
makes this launcher SIGKILL all processes at once (optional), "log_dir": where each
process's output goes}. The coordinator listens on a free port of 127.0.0.1.
Prints one JSON line: {"returncodes": [...], "killed": bool, "timed_out": bool}.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    port = free_port()
    procs = []
    for pid in range(spec["num_processes"]):
        argv = [a.replace("{port}", str(port)).replace("{pid}", str(pid)) for a in spec["argv"]]
        log = open(os.path.join(spec["log_dir"], f"process-{pid}.log"), "w")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + spec["timeout"]
    killed = timed_out = False
    while any(p.poll() is None for p in procs):
        marker = spec.get("kill_marker")
        if marker and os.path.exists(marker) and not killed:
            killed = True  # "kill both": every process at once, no chance to save
        elif time.monotonic() > deadline and not timed_out:
            timed_out = True
        if killed or timed_out:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.1)
    print(json.dumps({"returncodes": [p.returncode for p in procs], "killed": killed, "timed_out": timed_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
