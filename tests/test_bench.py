"""`m2n2 bench` at toy size: every row, ratios to the per-child loop, and the CPU the figures come from."""
import json
import os

import pytest

from m2n2_jax.bench import ENGINE_SETTINGS, EVAL_SETTINGS, cpu_name, run_benchmark


def test_cpu_name_is_the_machines():
    name = cpu_name()
    assert name and name != "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        info = open("/proc/cpuinfo").read()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        assert name.startswith(model)
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        assert ("avx512_bf16" in name) == ("avx512_bf16" in flags)


def test_bench_table_has_every_row_its_ratio_and_the_cpu(tmp_path, capsys):
    engine = [row for row in ENGINE_SETTINGS if row[0] in ("engine, 1 run, B=1", "engine, 1 run, B=16")]
    record = run_benchmark(forward_passes=32, loop_forward_passes=4, repeats=1, out=str(tmp_path), hidden=4,
                           engine_settings=engine, eval_settings=EVAL_SETTINGS[:1], gemm_size=64)
    printed = capsys.readouterr().out
    assert printed.startswith(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    lines = (tmp_path / "bench.md").read_text().splitlines()
    assert lines[0].startswith(f"CPU: {cpu_name()}")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    expected = ["per-child Python loop (reference procedure)", *(r[0] for r in engine), EVAL_SETTINGS[0][0]]
    assert list(rows) == ["setting", *expected]
    fps = record["forward_passes_per_second"]
    loop = fps[expected[0]]
    for label in expected:
        assert fps[label] > 0
        assert record["ratio_to_loop"][label] == pytest.approx(fps[label] / loop)
        assert rows[label][1] == f"{fps[label] / loop:.1f}x"
    assert rows[expected[0]][1] == "1.0x"
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["cpu"] == cpu_name() and saved["ratio_to_loop"] == pytest.approx(record["ratio_to_loop"])
