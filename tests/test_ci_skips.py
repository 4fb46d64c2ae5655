"""Under CI a skip fails the run unless tests/ci_skips.py lists it; elsewhere a skip stays a skip."""
import os
import subprocess
import sys

import ci_skips
import pytest
from conftest import TESTS_DIR

CASES = {
    "test_skips.py": "import pytest\n\ndef test_skips():\n    pytest.skip('no data here')\n\ndef test_runs():\n    pass\n",
    "test_module_skip.py": "import pytest\npytest.importorskip('no_such_module_for_this_test')\n\ndef test_never():\n    pass\n",
}


# the suite runs under pytest-xdist (setup.cfg): the verdict must survive a worker's report reaching the controller
WORKERS = pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one-process", "xdist"])


def run_pytest(tmp_path, ci: bool, name: str, workers=()):
    (tmp_path / name).write_text(CASES[name])
    (tmp_path / "conftest.py").write_text("from ci_skips import pytest_make_collect_report, pytest_runtest_makereport\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *workers, name],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


@WORKERS
def test_a_skip_fails_under_ci_and_stays_a_skip_elsewhere(tmp_path, workers):
    outside = run_pytest(tmp_path, False, "test_skips.py", workers)
    assert outside.returncode == 0 and "1 passed, 1 skipped" in outside.stdout, outside.stdout[-2000:]
    under_ci = run_pytest(tmp_path, True, "test_skips.py", workers)
    assert under_ci.returncode == 1 and "1 failed, 1 passed" in under_ci.stdout, under_ci.stdout[-2000:]
    assert "skipped under CI (no data here)" in under_ci.stdout


@WORKERS
def test_a_module_level_skip_fails_under_ci(tmp_path, workers):
    outside = run_pytest(tmp_path, False, "test_module_skip.py", workers)
    assert "1 skipped" in outside.stdout and outside.returncode == 5, outside.stdout[-2000:]  # 5: nothing else ran
    under_ci = run_pytest(tmp_path, True, "test_module_skip.py", workers)  # pytest.importorskip: a collection error
    assert under_ci.returncode != 0, under_ci.stdout[-2000:]
    assert "skipped under CI (could not import 'no_such_module_for_this_test'" in under_ci.stdout


def test_only_listed_skips_stand_under_ci():
    listed = next(iter(ci_skips.ALLOWED_SKIPS_IN_CI))
    assert ci_skips.failure_for(listed, "reason", ci=True) is None
    assert ci_skips.failure_for(listed + "[param]", "reason", ci=True) is None
    assert "ALLOWED_SKIPS_IN_CI" in ci_skips.failure_for("tests/x.py::test_y", "reason", ci=True)
    assert ci_skips.failure_for("tests/x.py::test_y", "reason", ci=False) is None
    assert all(reason.strip() for reason in ci_skips.ALLOWED_SKIPS_IN_CI.values())
    assert [ci_skips.in_ci({"CI": v}) for v in ("true", "1", "", "false", "0")] == [True, True, False, False, False]
