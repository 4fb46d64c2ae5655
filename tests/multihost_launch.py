"""Start N processes of one multi-host run on this machine and wait for them (used by the tests).

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


# --- used by the tests: run the launcher (in a private network namespace where allowed) ---
TIMEOUT = 600  # seconds per launch: a hang fails the test instead of CI


def isolation_prefix() -> list:
    """The command prefix of a private network namespace with only loopback, or [] where not allowed."""
    import shutil

    if not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] if probe.returncode == 0 else []


def isolated() -> bool:
    return bool(isolation_prefix())


def run_processes(tmp: str, name: str, argv: list, kill_marker: str | None = None, num_processes: int = 2):
    """Start ``argv`` ({port}, {pid} filled in) as a multi-host run on 127.0.0.1; (report, logs).

    One CPU device per process; fails (AssertionError with the logs) if the launcher fails.
    """
    log_dir = os.path.join(tmp, f"logs-{name}")
    os.makedirs(log_dir)
    spec = {"num_processes": num_processes, "timeout": TIMEOUT, "kill_marker": kill_marker, "log_dir": log_dir,
            "argv": argv}
    spec_path = os.path.join(tmp, f"{name}-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = isolation_prefix() + [sys.executable, os.path.abspath(__file__), spec_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT + 60)
    logs = "".join(open(os.path.join(log_dir, n)).read()[-3000:] for n in sorted(os.listdir(log_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    return json.loads(proc.stdout.strip().splitlines()[-1]), logs


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
