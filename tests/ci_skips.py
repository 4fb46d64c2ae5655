"""Under CI a skipped test is a failure, unless the suite lists it here with the reason it may skip.

CI sets the environment variable ``CI`` (``.ci/run`` sets ``CI=true``). There, a test (or a whole
module, e.g. through ``pytest.importorskip``) that skips turns into a failure naming the skip, so
that a missing test dependency or a missing file cannot pass for green. Outside CI skips stay
skips. Loaded by tests/conftest.py.
"""
from __future__ import annotations

import os

import pytest

# Test id (without parameters) -> why it may skip under CI. Keep this the one list of allowed skips.
ALLOWED_SKIPS_IN_CI = {
    "tests/engine/test_multihost.py::test_traffic_between_processes_per_step":
        "measuring loopback traffic per step needs a private network namespace (unshare -rn), which some "
        "machines and containers refuse; the multi-host results themselves are checked by the other tests",
}


def in_ci(environ=os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def failure_for(nodeid: str, reason: str, ci: bool) -> str | None:
    """The failure message for a skip of ``nodeid`` (None: the skip stands)."""
    if not ci or nodeid.split("[")[0] in ALLOWED_SKIPS_IN_CI:
        return None
    return (f"skipped under CI ({reason}); a skip there is a failure unless tests/ci_skips.py "
            "ALLOWED_SKIPS_IN_CI lists it with its reason")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_if_not_allowed(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        message = failure_for(report.nodeid, _skip_reason(report), in_ci())
        if message is not None:
            report.outcome, report.longrepr = "failed", message


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())  # a module-level skip (pytest.importorskip) happens here
