"""The method table: one list of names, and every option a method does not honour refused in one line."""
from conftest import ROOT_DIR
import os
import re

import pytest

from m2n2_jax.methods import registry as methods
from m2n2_jax.errors import ConfigError
from conftest import assert_one_line_error

PACKAGE = os.path.join(ROOT_DIR, "m2n2_jax")
OPTIONS = {"batch": 4, "archive_size": 10, "alpha": 0.5, "mutation_std": 0.02, "noise": "hash", "sigma": 0.1}


# Where a method's name is declared: the method table, or for the evosax strategies the family's list of
# them (the table reads it; a family never imports the table).
DECLARED_IN = {"methods/registry.py", "methods/es_strategies.py"}


def test_method_names_are_written_in_one_place():
    """A name is declared in one module; elsewhere it appears only in the module that implements it
    (its own result record)."""
    sources = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                sources[os.path.relpath(path, PACKAGE)] = open(path).read()
    for method in methods.ALL_METHODS:
        if method == "m2n2":  # also the program's and the package's name
            continue
        holders = {path for path, text in sources.items() if re.search(rf"[\"']{re.escape(method)}[\"']", text)}
        own = {f"methods/{method.replace('-', '_')}.py"}
        assert len(holders - own) == 1 and holders - own <= DECLARED_IN, (method, holders)


@pytest.mark.parametrize("method", methods.ALL_METHODS)
def test_every_method_refuses_what_it_does_not_honour(method):
    spec = methods.REGISTRY[method]
    init = spec.inits[0]
    for option, value in OPTIONS.items():
        if option in spec.options:
            methods.check(method, init, {option: value})
        else:
            with pytest.raises(ConfigError, match=f"{method} does not take --{option.replace('_', '-')}"):
                methods.check(method, init, {option: value})
    if "reference" in spec.key_orders:
        methods.check(method, init, {"key_order": "reference"})
    else:
        with pytest.raises(ConfigError, match=f"--key-order reference is not implemented for {method}"):
            methods.check(method, init, {"key_order": "reference"})
    methods.check(method, init, {"batch": 1, "key_order": "engine"})  # the defaults every method has


def test_a_key_order_a_method_does_not_implement_is_refused_in_one_line(run_main, tmp_path):
    """Issue 16: MAP-Elites accepted --key-order reference silently (it ran its own key order).

    MAP-Elites now implements the authors' order; an evosax strategy does not, and is refused."""
    assert "reference" in methods.REGISTRY["map-elites"].key_orders
    assert "reference" not in methods.REGISTRY["sep-cma-es"].key_orders
    res = run_main("evolve", "--method", "sep-cma-es", "--key-order", "reference", "--forward-passes", 20,
                   "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(res, "--key-order reference is not implemented for sep-cma-es")
    assert not (tmp_path / "o").exists()


def test_the_table_answers_what_the_commands_ask():
    assert methods.names(lambda m: m.merges) == (
        "m2n2", "m2n2-no-crossover", "m2n2-no-split-point", "m2n2-no-attraction", "ga", "ga-no-crossover",
        "map-elites", "brute-force")
    assert methods.names(lambda m: not m.checkpoints) == ("brute-force",)
    assert methods.names(lambda m: m.recipes) == tuple(methods.METHODS)
    assert methods.METHODS["ga"] == {"alpha": 0.0, "use_attraction": False}
    assert methods.method_config("m2n2-no-split-point").use_split_point is False
    with pytest.raises(ConfigError, match="cma-es is not one of the M2N2 family"):
        methods.method_config("cma-es")
    with pytest.raises(ConfigError, match="merges exactly 2 models"):
        methods.check("brute-force", "pretrained", num_models=3)
    with pytest.raises(ConfigError, match="--archive recipes runs the M2N2 family"):
        methods.check("map-elites", "pretrained", archive="recipes")
