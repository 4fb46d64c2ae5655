"""Imports inside m2n2_jax flow one way: no cycles, and no module imports one of a higher layer.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of a
module of the package, at module level and inside functions alike. The layers, lowest first:

- foundations: ``errors`` and ``version`` (import nothing of the package);
- ``algorithm``: pure functions on flat vectors;
- the task contract, ``tasks.base``: what the engine runs (a Task), below the engine;
- ``engine``: budgets, chunked loops, checkpoints, devices, hosts;
- method families (``methods.*``: evosax strategies, MAP-Elites, merges...), then the method
  table ``methods.registry`` above them: the table lists the families, a family never reads it;
- built-in tasks and files in and out (``tasks``, ``io``);
- language models (``llm``): they register their model files with ``io``, which never imports them;
- applications built on all of these: the benchmarks ``bench`` (the engine) and ``bench_llm`` (a
  language model's fitness call);
- the command line (``cli``);
- the package's facade (``m2n2_jax/__init__.py``, ``__main__``), which only re-exports.

A module may import its own layer or lower ones. Every module must belong to a layer, so a new
top-level module is placed here on purpose. Importing ``a.b.c`` also runs ``a/__init__.py`` and
``a/b/__init__.py``; those implicit edges are not counted (the facade imports everything by
design); the explicit edges are.
"""
from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / "m2n2_jax"

LAYERS = (
    ("foundations", ("m2n2_jax.errors", "m2n2_jax.version")),
    ("algorithm", ("m2n2_jax.algorithm",)),
    ("task contract", ("m2n2_jax.tasks.base",)),
    ("engine", ("m2n2_jax.engine",)),
    ("method families", ("m2n2_jax.methods",)),
    ("method table", ("m2n2_jax.methods.registry",)),
    ("tasks and files", ("m2n2_jax.tasks", "m2n2_jax.io")),
    ("language models", ("m2n2_jax.llm",)),
    ("applications", ("m2n2_jax.bench", "m2n2_jax.bench_llm")),
    ("command line", ("m2n2_jax.cli",)),
    ("facade", ("m2n2_jax", "m2n2_jax.__main__")),
)


def modules_of(package_dir: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """{dotted name: (file, is a package __init__)} of every .py file under ``package_dir``."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _own_module(name: str, modules) -> str | None:
    """The package module that importing ``name`` loads (its longest dotted prefix that is one)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(package_dir: pathlib.Path) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of the package's own modules, at any depth."""
    modules = modules_of(package_dir)
    edges = []
    for module, (path, is_package) in modules.items():
        here = module if is_package else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # "from a import b" imports the module a.b when there is one, else a name of a
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                imported = _own_module(target, modules)
                if imported is not None and imported != module:
                    edges.append((module, imported, node.lineno))
    return edges


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the most specific prefix naming ``module`` (None: in no layer)."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def upward_imports(edges) -> list[str]:
    return [f"{a} (line {line}, {LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a, b, line in edges if layer_of(b) > layer_of(a)]


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules_of(PACKAGE_DIR) if layer_of(m) is None] == []


def test_no_import_cycles():
    found = cycles(import_edges(PACKAGE_DIR))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_higher_layer():
    found = upward_imports(import_edges(PACKAGE_DIR))
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


@pytest.fixture
def toy_package(tmp_path):
    """A fake m2n2_jax with one cycle (algorithm.a <-> algorithm.b, one side inside a function)
    and one upward import hidden in a function (engine.run -> cli), written as relative imports."""
    root = tmp_path / "m2n2_jax"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "algorithm/__init__.py": "",
        "algorithm/a.py": "from m2n2_jax.algorithm import b\n",
        "algorithm/b.py": "def f():\n    from . import a\n    return a\n",
        "engine/__init__.py": "",
        "engine/run.py": "import os\nfrom ..errors import *\n\ndef g():\n    from ..cli import main\n",
        "cli/__init__.py": "main = None\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_find_a_cycle_and_an_upward_import_inside_functions(toy_package):
    edges = import_edges(toy_package)
    assert sorted((a, b) for a, b, _ in edges) == [
        ("m2n2_jax.algorithm.a", "m2n2_jax.algorithm.b"), ("m2n2_jax.algorithm.b", "m2n2_jax.algorithm.a"),
        ("m2n2_jax.engine.run", "m2n2_jax.cli"), ("m2n2_jax.engine.run", "m2n2_jax.errors")]
    assert cycles(edges) == [["m2n2_jax.algorithm.a", "m2n2_jax.algorithm.b"]]
    assert upward_imports(edges) == ["m2n2_jax.engine.run (line 5, engine) imports m2n2_jax.cli (command line)"]


def test_importing_the_package_and_the_cli_leaves_jax_backends_unstarted():
    """The CLI sets the CPU device count and starts a multi-host runtime before JAX's backends
    start; an import that starts them (evosax does, when imported) would silently take that away."""
    code = ("import jax, m2n2_jax, m2n2_jax.cli, m2n2_jax.llm, m2n2_jax.tasks, m2n2_jax.io.compare\n"
            "m2n2_jax.cli.build_parser()\n"
            "jax.config.update('jax_num_cpu_devices', 3)  # raises once the backends have started\n"
            "print(len(jax.devices('cpu')))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(PACKAGE_DIR.parent) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["3"], done.stderr[-2000:]
