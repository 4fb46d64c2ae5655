"""The README and docs as a newcomer follows them.

1. Every results table between ``<!-- table:NAME -->`` markers is what
   experiments/make_tables.py makes from the committed results files.
2. Every ```bash block of README.md and docs/*.md runs, at a toy budget
   (see ``toy_command``), and every ```python block runs after PYTHON_PRELUDE
   (a small model, data and two seeds for the "bring your own model" example),
   with loops over ``range(N)``, N >= 10, cut to two iterations. The blocks of
   one file run in order in one scratch directory (holding links to the
   repository's files), so a block can use what an earlier one wrote, as a
   reader would. Blocks that must not run carry a marker comment
   ``<!-- docs-test: skip (REASON) -->`` or ``<!-- docs-test: parse-only (REASON) -->``
   on the line before the fence (parse-only: the command line is parsed by the
   program's own argparse, nothing runs; a python block is only compiled).
   ``<!-- docs-test: needs MODULE (REASON) -->`` runs the block when MODULE is
   installed and parses it otherwise.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", os.path.join(ROOT, "experiments", "make_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- tables


def test_committed_tables_match_the_results():
    assert _load_make_tables().main(["--check"]) == 0, "run python experiments/make_tables.py"


def test_table_check_fails_on_a_typed_number(tmp_path, monkeypatch, capsys):
    tables = _load_make_tables()
    doc = tmp_path / "doc.md"
    good = "intro\n\n<!-- table:mnist5k -->\n" + tables.mnist5k() + "\n<!-- /table:mnist5k -->\n\nafter\n"
    assert "0.761 ± 0.012" in good  # the committed run's final mean and standard error
    doc.write_text(good.replace("0.761 ± 0.012", "0.800 ± 0.012"))
    monkeypatch.setattr(tables, "DOCS", [str(doc)])
    assert tables.main(["--check"]) == 1
    assert "0.800" in capsys.readouterr().out
    assert tables.main([]) == 0 and doc.read_text() == good
    assert tables.main(["--check"]) == 0


def test_every_table_marker_names_a_known_table():
    tables = _load_make_tables()
    for doc in tables.DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            for name in re.findall(r"<!-- table:([\w.-]+) -->", f.read()):
                assert name in tables.TABLES, f"{doc}: unknown table {name}"


# ---------------------------------------------------------------- commands and snippets

DOCS = ["README.md", *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                             if f.endswith(".md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|parse-only|needs\s+[\w.]+)\s*\((.+?)\)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
TOY_FORWARD_PASSES = 40           # every m2n2 evolve / merge / compare budget
TOY_RUNS = 1                      # every --runs
TOY_COMPARE_METHODS = 2           # compare --methods: every name is checked, the first two run
# Options added to `python SCRIPT` commands so that they finish in seconds.
TOY_SCRIPT_ARGS = {"examples/digits_cnn.py": ["--steps", "5"]}
# Repository entries a command may read; the commands run in a scratch directory holding links to them,
# so that what they write (runs/, ...) lands there.
LINKED = ("README.md", "docs", "examples", "experiments", "m2n2_jax", "tests", "setup.cfg", "pyproject.toml")
# Stops a program right after its command line parsed (argparse's parse_args), for parse-only blocks.
PARSE_ONLY_HOOK = textwrap.dedent('''
    import argparse, os, sys
    if os.environ.get("M2N2_DOCS_PARSE_ONLY") == "1":
        _parse_args = argparse.ArgumentParser.parse_args
        def _parse_then_stop(self, *args, **kwargs):
            _parse_args(self, *args, **kwargs)
            print("docs-test: command line parsed; not run", file=sys.stderr)
            sys.exit(0)
        argparse.ArgumentParser.parse_args = _parse_then_stop
''')
# What the README's "bring your own model" snippet leaves to the reader: a small model, data and two seeds.
PYTHON_PRELUDE = textwrap.dedent('''
    import jax, jax.numpy as jnp, flax.linen as nn
    from sklearn.datasets import load_digits
    _digits = load_digits()
    x_train = jnp.asarray(_digits.data[:200], jnp.float32)
    y_train = jnp.asarray(_digits.target[:200])
    class _SmallMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))
    my_model = _SmallMLP()
    seed_a = my_model.init(jax.random.PRNGKey(1), x_train[:1])
    seed_b = my_model.init(jax.random.PRNGKey(2), x_train[:1])
''')


def blocks(markdown: str):
    """(line, language, code, mode, reason) of each fenced block; mode: run, skip, parse-only or needs MODULE."""
    lines = markdown.splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        before = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(before)
        mode, reason = (marker.group(1).split()[0] if marker else "run"), (marker.group(2) if marker else "")
        if marker and mode == "needs":
            module = marker.group(1).split()[1]
            mode = "run" if importlib.util.find_spec(module) else "parse-only"
        out.append((start, fence.group(1), "\n".join(body), mode, reason))
    return out


def shell_commands(code: str) -> list[list[list[str]]]:
    """Each command line of a bash block as its `&&`-chained simple commands (token lists)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        parts, current = [], []
        for token in lexer:
            if token in ("&&", "&"):          # a background `&` runs in turn here
                parts.append(current)
                current = []
            else:
                current.append(token)
        if current:
            parts.append(current)
        if parts:
            commands.append(parts)
    return commands


def _option(tokens: list[str], name: str):
    """Index of `name VALUE` in tokens (rewriting `name=VALUE` to that form), or None."""
    for i, token in enumerate(tokens):
        if token.startswith(name + "="):
            tokens[i:i + 1] = [name, token.split("=", 1)[1]]
        if tokens[i] == name:
            return i
    return None


def toy_command(tokens: list[str]) -> list[str] | None:
    """The command at toy budget, None for set-up steps the test environment already did.

    - `python3 -m venv ...`, `pip install ...`, `source .venv/bin/activate`: dropped (this venv is set up);
      `.venv/bin/X` and `python`/`python3` run from the test's own environment.
    - `m2n2 evolve|merge|compare`: --forward-passes 40 (rounded up to a multiple of --batch), --runs 1,
      --no-checkpoint and --quiet where the subcommand has them; `compare --from` runs as written;
      `compare --methods`: every method name is checked here, the first two run (each is a process).
    - `m2n2 bench`: --forward-passes 40, --loop-forward-passes 10, --repeats 1.
    - `python SCRIPT`: TOY_SCRIPT_ARGS[SCRIPT] appended.
    - an --out outside runs/ is moved under runs/docs-test/, so that nothing in docs/ is overwritten.
    """
    tokens = list(tokens)
    program = tokens[0].removeprefix(".venv/bin/")
    if program in ("python", "python3") and tokens[1:3] == ["-m", "venv"]:
        return None
    if os.path.basename(program).startswith("pip") and "install" in tokens or program in ("source", "."):
        return None
    bin_dir = os.path.dirname(sys.executable)
    if program in ("python", "python3"):
        tokens[0] = sys.executable
        script = tokens[1] if len(tokens) > 1 else ""
        tokens += TOY_SCRIPT_ARGS.get(script, [])
    elif program == "m2n2":
        tokens[0] = os.path.join(bin_dir, "m2n2")
        sub = tokens[1] if len(tokens) > 1 else ""
        runs_budget = sub in ("evolve", "merge") or (sub == "compare" and _option(tokens, "--from") is None)
        if runs_budget:
            b = _option(tokens, "--batch")
            batch = int(tokens[b + 1]) if b is not None and tokens[b + 1].isdigit() else 1
            budget = str(batch * -(-TOY_FORWARD_PASSES // batch))
            f = _option(tokens, "--forward-passes")
            if f is None:
                tokens += ["--forward-passes", budget]
            else:
                tokens[f + 1] = budget
            r = _option(tokens, "--runs")
            if r is not None:
                tokens[r + 1] = str(TOY_RUNS)
            if sub in ("evolve", "merge"):
                tokens += ["--no-checkpoint", "--quiet"]
            m = _option(tokens, "--methods") if sub == "compare" else None
            if m is not None:
                from m2n2_jax.methods.registry import check as check_method

                i = _option(tokens, "--init")
                methods = [name.strip() for name in tokens[m + 1].split(",") if name.strip()]
                for name in methods:
                    check_method(name, tokens[i + 1] if i is not None else "scratch")
                tokens[m + 1] = ",".join(methods[:TOY_COMPARE_METHODS])
        if sub == "bench":
            for name, value in (("--forward-passes", "40"), ("--loop-forward-passes", "10"), ("--repeats", "1")):
                i = _option(tokens, name)
                tokens += [name, value] if i is None else []
                if i is not None:
                    tokens[i + 1] = value
    o = _option(tokens, "--out")
    if o is not None and not tokens[o + 1].startswith("runs/"):
        tokens[o + 1] = os.path.join("runs", "docs-test", tokens[o + 1].lstrip("/"))
    return tokens


def _scratch_dir(tmp_path) -> str:
    for entry in LINKED:
        os.symlink(os.path.join(ROOT, entry), tmp_path / entry)
    hook = tmp_path / "_docs_test_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PARSE_ONLY_HOOK)
    return str(tmp_path)


def _env(tmp_path, parse_only: bool) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "_docs_test_hook"), ROOT])
    env["M2N2_CACHE_DIR"] = str(tmp_path / "cache")
    env["M2N2_DOCS_PARSE_ONLY"] = "1" if parse_only else "0"
    env.pop("XLA_FLAGS", None)
    return env


def _run(argv, cwd, env, where: str, timeout: int = 600) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{where}: `{shlex.join(argv)}` exited with {proc.returncode}:\n"
                                  f"{(proc.stdout + proc.stderr)[-3000:]}")


def run_block(doc: str, line: int, language: str, code: str, mode: str, tmp_path) -> int:
    """Run (or parse) one block; returns how many commands ran."""
    cwd = str(tmp_path)
    where = f"{doc}:{line}"
    env = _env(tmp_path, parse_only=(mode == "parse-only"))
    if language in ("bash", "sh", "shell"):
        count = 0
        for chain in shell_commands(code):
            for tokens in chain:
                try:
                    command = toy_command(tokens)
                except Exception as err:
                    raise AssertionError(f"{where}: `{shlex.join(tokens)}`: {err}") from err
                if command is not None:
                    _run(command, cwd, env, where)
                    count += 1
        return count
    if language == "python":
        if mode == "parse-only":
            compile(code, where, "exec")
            return 0
        toy = re.sub(r"range\((\d{2,})\)", "range(2)", code)   # loops over a budget: two iterations
        script = tmp_path / f"_block_{line}.py"
        script.write_text(PYTHON_PRELUDE + "\n" + toy)
        _run([sys.executable, str(script)], cwd, env, where)
        return 1
    return 0


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run_at_toy_budget(doc, tmp_path):
    with open(os.path.join(ROOT, doc)) as f:
        found = blocks(f.read())
    _scratch_dir(tmp_path)
    for line, language, code, mode, reason in found:
        if mode == "skip":
            assert reason, f"{doc}:{line}: a skipped block must say why"
            continue
        run_block(doc, line, language, code, mode, tmp_path)


def test_blocks_markers_and_rewrites():
    doc = textwrap.dedent("""
        Text.

        <!-- docs-test: skip (a synopsis) -->
        ```bash
        m2n2 evolve --runs R
        ```

        ```bash
        .venv/bin/m2n2 evolve --task digits --runs 10 --batch 16 --forward-passes 50000 --out docs/results/x  # note
        m2n2 compare --from runs/a runs/b \\
            --out runs/report
        ```
        """)
    found = blocks(doc)
    assert [(b[1], b[3]) for b in found] == [("bash", "skip"), ("bash", "run")]
    assert found[0][4] == "a synopsis"
    evolve, compare = shell_commands(found[1][2])
    toy = toy_command(evolve[0])
    assert toy[:2] == [os.path.join(os.path.dirname(sys.executable), "m2n2"), "evolve"]
    assert toy[toy.index("--runs") + 1] == "1" and toy[toy.index("--forward-passes") + 1] == "48"  # 3 x --batch 16
    assert toy[toy.index("--out") + 1] == "runs/docs-test/docs/results/x" and "note" not in " ".join(toy)
    assert toy_command(compare[0])[1:] == ["compare", "--from", "runs/a", "runs/b", "--out", "runs/report"]
    assert toy_command(["python3", "-m", "venv", ".venv"]) is None
    assert toy_command([".venv/bin/pip", "install", "-e", "."]) is None


@pytest.mark.parametrize("code, mode", [("m2n2 evolve --task digits --no-such-option 3 --out runs/x", "run"),
                                        ("m2n2 evolve --task digits --no-such-option 3 --out runs/x", "parse-only"),
                                        ("python examples/no_such_script.py", "run"),
                                        ("m2n2 compare --methods m2n2,no-such-method --out runs/x", "run")])
def test_a_broken_command_fails(code, mode, tmp_path):
    _scratch_dir(tmp_path)
    with pytest.raises(AssertionError, match="README.md:7"):
        run_block("README.md", 7, "bash", code, mode, tmp_path)


def test_parse_only_parses_without_running(tmp_path):
    _scratch_dir(tmp_path)
    code = "m2n2 evolve --task digits --runs 10 --forward-passes 50000 --out runs/parsed"
    assert run_block("README.md", 1, "bash", code, "parse-only", tmp_path) == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- where figures come from


def test_cpu_description_names_model_and_bf16_flags(tmp_path):
    from m2n2_jax.io.results import cpu_description

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 167\nmodel name\t: Intel(R) Xeon(R) "
                    "Processor\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n"
                    "model name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_description(str(info)) == "Intel(R) Xeon(R) Processor (model 167; avx512_bf16, amx_bf16)"
    info.write_text("model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2\n")
    assert cpu_description(str(info)) == "AMD EPYC 9B14"


def test_experiment_scripts_do_not_overwrite_results_by_default(tmp_path, capsys):
    from experiments.diffusion import merge as script

    (tmp_path / "results.json").write_text("{}")
    assert script.main(["--out", str(tmp_path)]) == 2          # refused before any training
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"
    for path in ("experiments/diffusion/merge.py", "experiments/tiny_llm/merge.py", "experiments/smollm2/merge.py",
                 "experiments/smollm2/base_eval.py", "experiments/reproduce_digits.sh",
                 "experiments/reproduce_baselines.sh"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        assert not re.search(r"""(default=|:-)["']?docs/results""", text), f"{path} writes to docs/results by default"
