"""The README and docs as a newcomer follows them.

1. Every results table between ``<!-- table:NAME -->`` markers is what
   experiments/make_tables.py makes from the committed results files.
2. Every ```bash block of README.md and docs/*.md runs, at a toy budget
   (see ``toy_command``), and every ```python block runs with the small
   model this file supplies; blocks that must not run carry a marker comment
   ``<!-- docs-test: skip (REASON) -->`` or ``<!-- docs-test: parse-only (REASON) -->``
   on the line before the fence (parse-only: the command line is parsed by the
   program's own argparse, nothing runs).
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
