"""The accelerator check runs end to end at toy size on a CPU and prints its one table."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_prints_one_table_at_toy_size(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "device_check.py"), "--toy",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "JAX_PLATFORMS": "cpu",  # this checkout's m2n2_jax, not an installed one
                               "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert proc.stdout == table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| check | result |"
    names = [row.split(" | ")[0][2:] for row in rows[1:]]
    assert names[0].startswith("digits, 2 runs x 200 forward passes")
    assert names[1:5] == [f"engine throughput, 1 run, B={b}" for b in (1, 16, 64, 256)]
    assert names[5].startswith("full CMA-ES, D=310, 20 generations")
    assert names[6].startswith("llm-exact-match scoring")
    assert "s wall" in rows[1] and "forward passes/s" in rows[2] and "s per generation" in rows[6]
    assert "ms per child" in rows[7]
