"""The options evolve and merge share are declared once: the settings dataclasses give every
option's name, default and help, and what a command resolves is what they say."""
import argparse
import dataclasses

from m2n2_jax.cli import build_parser
from m2n2_jax.cli.options import EvolveSettings, MergeSettings, RunSettings, defaults
from m2n2_jax.cli.running import resolve


def _actions(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def test_shared_settings_are_the_same_options_in_evolve_and_merge():
    evolve, merge = _actions("evolve"), _actions("merge")
    for field in dataclasses.fields(RunSettings):
        if field.name == "forward_passes":  # merge's default budget is its own (10000)
            continue
        a, b = evolve[field.name], merge[field.name]
        assert (a.option_strings, a.type, a.choices, a.default) == (b.option_strings, b.type, b.choices, b.default)
        assert a.default is None  # not given unless given: the dataclass (or the checkpoint) supplies it


def test_every_setting_is_an_option_whose_help_gives_the_dataclass_default():
    for command, settings_class in (("evolve", EvolveSettings), ("merge", MergeSettings)):
        actions = _actions(command)
        for field in dataclasses.fields(settings_class):
            assert field.name in actions, (command, field.name)
            if field.default is not None:
                assert actions[field.name].help.endswith(f"(default {field.default})"), (command, field.name)


def test_options_left_out_resolve_to_the_dataclass_defaults():
    parser = build_parser()
    assert resolve(parser.parse_args(["evolve"]), EvolveSettings).values == defaults(EvolveSettings)
    merge = resolve(parser.parse_args(["merge", "a.npy", "b.npy", "--seed", "7", "--archive", "recipes"]),
                    MergeSettings)
    expected = {**defaults(MergeSettings), "models": ["a.npy", "b.npy"], "seed": 7, "archive": "recipes"}
    assert merge.values == expected and merge.values["forward_passes"] == 10_000
    assert "seed" not in merge.recorded() and merge.seeds() == [7]
