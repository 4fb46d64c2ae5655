"""A merge never reports an empty archive slot, and never a model that does not beat the best input.

Held-out style: a model merged with itself must come back bit for bit (the issue's
SmolLM2 merge of a GGUF with itself wrote all-zero tensors), on the dense and the
recipe archive, whether the task scores it 0 everywhere or not.
"""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.algorithm import niches, recipes, strategy
from m2n2_jax.algorithm.config import M2N2Config
from m2n2_jax.engine import best_input
from m2n2_jax.io import model_files
from m2n2_jax.methods import registry
from m2n2_jax.methods.merge_models import with_seed_models
from m2n2_jax.tasks.custom import custom_task

PLUGIN = '''
import jax.numpy as jnp
import numpy as np
from m2n2_jax.tasks.custom import custom_task

def make(solvable=1):
    """A linear classifier on 40 points; solvable=0 asks for a class that does not exist (every score 0)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(6, 3)).astype(np.float32), axis=1) if solvable else np.full(40, 7)
    score = lambda p: (jnp.argmax(x @ p["w"], axis=1) == y).astype(jnp.float32)
    return custom_task("self-merge", {"w": np.zeros((6, 3), np.float32)}, score)
'''


def linear_task(solvable: bool):
    namespace = {}
    exec(PLUGIN, namespace)
    return namespace["make"](int(solvable))


def model(seed=1):
    return np.random.default_rng(seed).normal(size=18).astype(np.float32)


@pytest.mark.parametrize("archive", ["dense", "recipes"])
@pytest.mark.parametrize("solvable", [False, True], ids=["all-zero-scores", "nonzero-scores"])
def test_a_model_merged_with_itself_comes_back_unchanged(archive, solvable):
    task = linear_task(solvable)
    a = model()
    assert (np.mean(task.score_vector(jnp.asarray(a))) > 0) == solvable
    res = registry.run_method("m2n2", with_seed_models(task, np.stack([a, a])), [0, 1], 60, init="pretrained",
                              archive=archive)
    for r in range(2):
        np.testing.assert_array_equal(res.best[r], a)  # max |difference| 0
        assert res.extra["reported"][r]["model"] == "input 0"


def test_a_merge_no_child_beats_returns_the_best_input():
    """The second input solves every point, so no child can beat it; children that tie it sit in lower
    slots (they replace the weaker first input), and must not be reported instead of it."""
    task = linear_task(True)
    rng = np.random.default_rng(0)
    rng.normal(size=(40, 6))  # the plugin's points, drawn first
    perfect = rng.normal(size=(6, 3)).astype(np.float32).ravel()  # the plugin's own labelling weights
    weak = model(3)
    assert float(np.mean(task.score_vector(jnp.asarray(perfect)))) == 1.0
    for archive in ("dense", "recipes"):
        res = registry.run_method("m2n2", with_seed_models(task, np.stack([weak, perfect])), [0, 1, 2], 120,
                                  init="pretrained", archive=archive)
        for r in range(3):
            np.testing.assert_array_equal(res.best[r], perfect)
            assert res.extra["reported"][r]["model"] == "input 1"


def test_a_child_that_beats_the_inputs_is_reported():
    assert best_input.choose([0.5, 0.7, 0.6], [0.6, 0.6]) == [0, None, 0]  # ties go to the input, the first
    assert best_input.choose([0.0], [0.0, 0.0]) == [0]


def test_empty_slots_are_never_parents_nor_reported_nor_kept_over_members():
    """All-zero scores: both seeds must stay in the archive (the second used to replace the first),
    parents are drawn only from them, and the reported member is the lowest filled slot."""
    config = M2N2Config(archive_size=6, mutation_std=0.0)
    seeds = np.stack([model(1), model(2)])
    zeros = jnp.zeros((2, 5))
    strat = strategy.M2N2(config, seeds[0])
    state = strat.init(jnp.zeros(2, jnp.uint32), jnp.asarray(seeds), zeros, strat.default_params)
    assert np.asarray(state.filled).tolist() == [True, True] + [False] * 4
    np.testing.assert_array_equal(np.asarray(state.params[:2]), seeds)
    bank = recipes.SeedBank.build(seeds, block=4)
    archive = recipes.init(config, bank, zeros)
    assert np.asarray(archive.members).tolist() == [True, True] + [False] * 4
    assert int(state.best_index) == archive.best_index == 0
    import jax

    keys = jax.random.split(jax.random.PRNGKey(0), 300)
    for filled in (state.filled, archive.members):
        a, b = jax.vmap(lambda k: niches.select_parents(k, jnp.zeros((6, 5)), jnp.ones(5), 1.0, True,
                                                        filled=filled))(keys)
        assert set(np.asarray(a)) == set(np.asarray(b)) == {0, 1}
    # negative scores: a member less fit than an empty slot is still kept, the empty slot is filled
    scores = jnp.asarray(np.r_[np.full((1, 5), -1.0), np.zeros((3, 5))], jnp.float32)
    _, _, ok, slot = niches.insert(jnp.zeros((4, 1)), scores, jnp.ones(1), jnp.full(5, -2.0), jnp.ones(5), 1.0,
                                   filled=jnp.asarray([True, False, False, False]))
    assert bool(ok) and int(slot) == 1
    assert int(strategy.best_filled(scores, jnp.asarray([True, False, False, False]))) == 0


def test_cli_merge_of_a_model_with_itself_writes_it_and_says_so(run_main, tmp_path):
    """The issue's command on a tiny model: every score 0, recipe archive; merged.npy is the input."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    task = linear_task(False)
    path = model_files.save_model(str(tmp_path / "g.npy"), model(), task.layout)
    res = run_main("merge", path, path, "--task", f"{plugin}:make", "--task-arg", "solvable=0",
                   "--forward-passes", 4, "--archive", "recipes", "--out", tmp_path / "o", "--quiet")
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "merged.npy"), model())
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    assert record["reported"][0]["model"] == "input 0" and "unchanged" in record["reported"][0]["why"]
    assert "no child beats the best input" in res.stderr
