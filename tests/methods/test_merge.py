"""`m2n2 merge`, model files and task plugins: a user's own models, merged from the command line."""
from conftest import ROOT_DIR as ROOT
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax import cli
from m2n2_jax.io import model_files
from m2n2_jax.errors import DataError, ScoreFunctionError, SeedModelError
from m2n2_jax.methods.merge_models import describe_models
from m2n2_jax.tasks import custom_task, digits_task
from conftest import assert_one_line_error

PLUGIN = os.path.join(ROOT, "examples", "digits_cnn.py")


@pytest.fixture(scope="module")
def small_task():
    return digits_task(hidden=8)


# ---- model files -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["m.npy", "m.npz", "m.msgpack", "m_orbax"])
def test_model_file_round_trip(tmp_path, small_task, name):
    vector = np.random.default_rng(1).normal(size=small_task.num_params).astype(np.float32)
    path = model_files.save_model(str(tmp_path / name), vector, small_task.layout)
    np.testing.assert_array_equal(model_files.load_model(path, small_task.layout), vector)


def test_npz_per_parameter_names_and_stacks(tmp_path, small_task):
    """An .npz keyed by parameter path loads by name (not by file order); a stack needs @INDEX."""
    layout = small_task.layout
    vector = np.arange(small_task.num_params, dtype=np.float32)
    params = layout.unravel(jnp.asarray(vector))
    named = {"/".join(str(k.key) for k in path): np.asarray(leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(tmp_path / "named.npz", **dict(reversed(list(named.items()))))  # any order
    np.testing.assert_array_equal(model_files.load_model(str(tmp_path / "named.npz"), layout), vector)

    np.savez(tmp_path / "stack.npz", best_vectors=np.stack([vector, 2 * vector, 3 * vector]), seeds=np.arange(3))
    np.testing.assert_array_equal(model_files.load_model(str(tmp_path / "stack.npz@2"), layout), 3 * vector)
    with pytest.raises(SeedModelError, match=r"holds 3 models .*@INDEX"):
        model_files.load_model(str(tmp_path / "stack.npz"), layout)
    with pytest.raises(SeedModelError, match="out of range"):
        model_files.load_model(str(tmp_path / "stack.npz@3"), layout)


def test_model_file_errors_name_the_problem(tmp_path, small_task):
    vector = np.zeros(small_task.num_params, np.float32)
    bigger = digits_task(hidden=16).layout
    for name in ("m.npy", "m.msgpack", "m.npz"):
        model_files.save_model(str(tmp_path / name), vector, small_task.layout)
    with pytest.raises(SeedModelError, match="flat vector of 1,210 parameters"):
        model_files.load_model(str(tmp_path / "m.npy"), bigger)
    with pytest.raises(SeedModelError, match=r"params/Dense_0/bias has shape \(8,\).*\(16,\)"):
        model_files.load_model(str(tmp_path / "m.msgpack"), bigger)
    with pytest.raises(DataError, match="does not exist"):
        model_files.load_model(str(tmp_path / "nope.msgpack"), bigger)
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(DataError, match="unknown model format '.pt'"):
        model_files.load_model(str(tmp_path / "m.pt"), bigger)
    (tmp_path / "bad.msgpack").write_bytes(b"\xc1\xc1")  # 0xc1 is a byte msgpack never uses
    with pytest.raises(DataError, match="bad.msgpack: cannot read it as a msgpack model"):
        model_files.load_model(str(tmp_path / "bad.msgpack"), small_task.layout)


# ---- custom tasks ------------------------------------------------------------------------------

def test_custom_task_checks_and_headline():
    params = {"w": jnp.zeros((3,))}
    x = jnp.eye(3)
    with pytest.raises(ScoreFunctionError, match="one score per datapoint"):
        custom_task("t", params, lambda p: jnp.sum(p["w"]))
    with pytest.raises(ScoreFunctionError, match="not scalars"):
        custom_task("t", params, lambda p: x @ p["w"], lambda p: {"m": p["w"]})
    task = custom_task("t", params, lambda p: x @ p["w"], lambda p: {"held_out": jnp.sum(p["w"]), "other": 1.0})
    assert task.headline_metric == "held_out" and task.num_datapoints == 3 and task.num_params == 3
    np.testing.assert_allclose(task.score_vector(jnp.asarray([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])
    assert custom_task("t", params, lambda p: x @ p["w"]).headline_metric == "best_train_score"


def test_a_task_built_directly_leads_with_a_metric_it_has():
    """Task.headline_metric used to default to test_accuracy even for tasks that do not log it."""
    from m2n2_jax.algorithm.flatten import VectorLayout
    from m2n2_jax.tasks.base import Task

    layout = VectorLayout.of(jnp.zeros(3))

    def make(metrics):
        return Task(name="t", layout=layout, num_datapoints=3, score_vector=lambda v: v, metrics=metrics,
                    random_seed=lambda key: jnp.zeros(3))

    assert make(lambda v: {"test_exact_match": jnp.mean(v), "x": 0.0}).headline_metric == "test_exact_match"
    assert make(lambda v: {"x": 0.0, "test_accuracy": jnp.mean(v)}).headline_metric == "test_accuracy"
    assert make(lambda v: {}).headline_metric == "best_train_score"
    assert make(lambda v: {"zeta": jnp.mean(v), "alpha": 0.0}).headline_metric == "zeta"  # as returned, not sorted


# ---- m2n2 merge --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """The paper's pre-trained pair (digits 0-4 and 5-9), saved as a .msgpack and a per-parameter .npz."""
    from m2n2_jax.tasks.digits import digits_pretrained_pair

    directory = tmp_path_factory.mktemp("pair")
    old = os.environ.get("M2N2_CACHE_DIR")
    os.environ["M2N2_CACHE_DIR"] = str(directory)
    try:
        task = digits_task()
        a, b = np.asarray(digits_pretrained_pair())
    finally:
        if old is None:
            os.environ.pop("M2N2_CACHE_DIR")
        else:
            os.environ["M2N2_CACHE_DIR"] = old
    paths = (model_files.save_model(str(directory / "low.msgpack"), a, task.layout),
             model_files.save_model(str(directory / "high.npz"), b, task.layout))
    return task, np.stack([a, b]), paths


def test_merge_digits_pair_beats_both_models(run_main, tmp_path, digits_pair):
    task, vectors, paths = digits_pair
    out = tmp_path / "merged"
    res = run_main("merge", *paths, "--forward-passes", 300, "--runs", 2, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "results.json").read_text())
    inputs = describe_models(task, vectors)
    assert [m["test_accuracy"] for m in record["models"]] == pytest.approx([r["test_accuracy"] for r in inputs])
    merged = model_files.load_model(str(out / "merged.msgpack"), task.layout)  # the first input's format
    best = np.load(out / "best_models.npz")["best_vectors"]
    np.testing.assert_array_equal(merged, best[record["merged"]["run"]])
    final_train = np.asarray(record["best_train_score"])[:, -1]
    assert record["merged"]["run"] == int(np.argmax(final_train))
    # the merged model is re-scored independently of the run's own log
    assert describe_models(task, merged[None])[0]["test_accuracy"] == pytest.approx(record["merged"]["test_accuracy"])
    assert record["merged"]["test_accuracy"] > max(r["test_accuracy"] for r in inputs) + 0.1
    assert record["merged"]["train_score"] >= max(r["train_score"] for r in inputs)
    assert record["config"]["mutation_std"] == 0.0 and record["headline_metric"] == "test_accuracy"
    table = (out / "table.md").read_text()
    assert "**merged**" in table and "mean of 2 runs" in table and (out / "curves.png").stat().st_size > 0


def test_merge_resume_equals_uninterrupted_and_refuses_other_models(run_main, tmp_path, digits_pair):
    _, _, paths = digits_pair
    out = tmp_path / "m"
    args = ["merge", *paths, "--forward-passes", 400, "--checkpoint-every", 100, "--log-every", 20, "--quiet"]
    assert run_main(*args, "--out", out).returncode == 0
    whole = json.loads((out / "results.json").read_text())
    merged = (out / "merged.msgpack").read_bytes()
    # as if the process had died after the checkpoint at 200 forward passes
    for step in ("300", "400"):
        shutil.rmtree(out / "checkpoints" / step)
    for name in ("results.json", "merged.msgpack", "best_models.npz", "table.md"):
        os.remove(out / name)
    assert sorted(os.listdir(out / "checkpoints")) == ["200"]
    res = run_main("merge", "--resume", out, "--quiet")
    assert res.returncode == 0, res.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert resumed["best_train_score"] == whole["best_train_score"]
    assert (out / "merged.msgpack").read_bytes() == merged

    # a model file that changed since the run started is refused
    shutil.rmtree(out / "checkpoints" / "400")
    os.remove(out / "results.json")
    task = digits_task()
    original = open(paths[0], "rb").read()
    model_files.save_model(paths[0], model_files.load_model(paths[0], task.layout) * 1.01, task.layout)
    try:
        assert_one_line_error(run_main("merge", "--resume", out, "--quiet"), "changed since this merge started")
    finally:
        with open(paths[0], "wb") as f:
            f.write(original)


@pytest.mark.parametrize("extra,needle", [
    ([], "at least two model files (got 1)"),
    (["B", "--method", "cma-es"], "'cma-es' cannot merge given models"),
    (["B", "B", "--method", "brute-force"], "brute-force merges exactly 2 models (got 3)"),
    (["B", "--hidden", "16"], "params/Dense_0/bias has shape (256,)"),
    (["B", "--task-arg", "x=1"], "--task-arg is for task plugins"),
    (["B", "--task", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
    (["B", "--task", f"{PLUGIN}:nope"], "has no function 'nope'"),
    (["B", "--task", f"{PLUGIN}:make_task", "--task-arg", "bogus=1"], "unexpected keyword argument 'bogus'; it takes"),
    (["B", "--task", f"{PLUGIN}:make_task", "--hidden", "4"], "--hidden configure the built-in tasks"),
])
def test_merge_mistakes_end_in_one_line(run_main, tmp_path, digits_pair, extra, needle):
    _, _, paths = digits_pair
    extra = [paths[1] if e == "B" else e for e in extra]
    res = run_main("merge", paths[0], *extra, "--forward-passes", 20, "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(res, needle)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_an_error_inside_a_plugin_is_reported_as_the_plugins_own(tmp_path):
    """A TypeError raised by the plugin's code is not a --task-arg naming problem: its traceback is kept."""
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def make(scale=1):\n    return len(scale)  # a bug in the user's code: TypeError\n")
    with pytest.raises(TypeError, match="has no len") as info:
        cli.main(["evolve", "--task", f"{plugin}:make", "--task-arg", "scale=2", "--out", str(tmp_path / "o"),
                  "--quiet"])
    assert any("raised inside the task plugin" in note for note in info.value.__notes__)
    assert info.traceback[-1].name == "make"  # the traceback ends in the plugin's own line


def test_plugin_task_merges_own_flax_models(run_main, tmp_path):
    """The example plugin: two CNN specialists trained here with optax, merged from the CLI."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_cnn_example", PLUGIN)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # flax modules are dataclasses: their module must be importable
    spec.loader.exec_module(example)
    task = example.make_task(channels=2)
    paths = []
    for name, labels, seed in (("low", [0, 1, 2, 3, 4], 1), ("high", [5, 6, 7, 8, 9], 2)):
        params = example.train_specialist(2, labels, steps=60, seed=seed)
        paths.append(model_files.save_model(str(tmp_path / f"{name}.msgpack"), task.layout.ravel(params),
                                            task.layout))
    res = run_main("merge", *paths, "--task", f"{PLUGIN}:make_task", "--task-arg", "channels=2",
                   "--forward-passes", 200, "--out", tmp_path / "out", "--quiet")
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["task"] == "digits-cnn2" and record["config"]["task_args"] == ["channels=2"]
    merged = model_files.load_model(str(tmp_path / "out" / "merged.msgpack"), task.layout)
    assert float(task.metrics(merged)["test_accuracy"]) == pytest.approx(record["merged"]["test_accuracy"])
    assert record["merged"]["train_score"] > max(m["train_score"] for m in record["models"])

    # the same plugin drives `m2n2 evolve` from scratch
    res = run_main("evolve", "--task", f"{PLUGIN}:make_task", "--task-arg", "channels=2", "--forward-passes", 100,
                   "--out", tmp_path / "evolved", "--quiet", "--no-checkpoint")
    assert res.returncode == 0, res.stderr
    evolved = json.loads((tmp_path / "evolved" / "results.json").read_text())
    assert evolved["headline_metric"] == "test_accuracy" and len(evolved["final_test_accuracy"]) == 1


def test_merge_three_models_in_npy(run_main, tmp_path, digits_pair):
    """Any number of seeds: the pair and their average, as flat .npy files; the merge is written as .npy too."""
    task, vectors, _ = digits_pair
    paths = []
    for i, v in enumerate([vectors[0], vectors[1], vectors.mean(0)]):
        paths.append(model_files.save_model(str(tmp_path / f"m{i}.npy"), v, task.layout))
    res = run_main("merge", *paths, "--forward-passes", 60, "--batch", 3, "--out", tmp_path / "o", "--quiet",
                   "--no-checkpoint")
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [m["path"] for m in record["models"]] == paths
    merged = np.load(tmp_path / "o" / "merged.npy")
    assert merged.shape == (task.num_params,)
    assert describe_models(task, merged[None])[0]["train_score"] == pytest.approx(record["merged"]["train_score"])


def test_recipe_archive_equals_dense_archive(run_main, tmp_path, digits_pair):
    """--archive recipes stores members as combinations of the inputs and follows the dense run exactly."""
    _, _, paths = digits_pair
    records = {}
    for archive in ("dense", "recipes"):
        res = run_main("merge", *paths, "--forward-passes", 240, "--runs", 2, "--archive", archive,
                       "--out", tmp_path / archive, "--quiet", "--no-checkpoint")
        assert res.returncode == 0, res.stderr
        records[archive] = json.loads((tmp_path / archive / "results.json").read_text())
    dense, rec = records["dense"], records["recipes"]
    assert rec["inserted"] == dense["inserted"] and rec["inserted"][0][-1] > 10  # the archive really changed
    assert rec["test_accuracy"] == dense["test_accuracy"]
    assert rec["best_train_score"] == dense["best_train_score"]
    assert rec["merged"]["test_accuracy"] == pytest.approx(dense["merged"]["test_accuracy"])
    memory = rec["archive_memory"]
    assert memory["recipe_archive_bytes"] < memory["dense_archive_bytes"] / 3


def test_recipe_archive_resumes_exactly(run_main, tmp_path, digits_pair):
    _, _, paths = digits_pair
    out = tmp_path / "r"
    args = ["merge", *paths, "--archive", "recipes", "--forward-passes", 300, "--checkpoint-every", 100,
            "--log-every", 20, "--quiet"]
    assert run_main(*args, "--out", out).returncode == 0
    whole = json.loads((out / "results.json").read_text())
    shutil.rmtree(out / "checkpoints" / "200")
    shutil.rmtree(out / "checkpoints" / "300")
    os.remove(out / "results.json")
    res = run_main("merge", "--resume", out, "--quiet")
    assert res.returncode == 0, res.stderr
    resumed = json.loads((out / "results.json").read_text())
    for field in ("test_accuracy", "best_train_score", "inserted"):
        assert resumed[field] == whole[field], field


@pytest.mark.parametrize("extra,needle", [
    (["--mutation-std", "0.01"], "needs mutation_std = 0"),
    (["--method", "map-elites"], "--archive recipes runs the M2N2 family"),
])
def test_recipe_archive_mistakes(run_main, tmp_path, digits_pair, extra, needle):
    _, _, paths = digits_pair
    res = run_main("merge", *paths, "--archive", "recipes", *extra, "--forward-passes", 20,
                   "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(res, needle)


def test_recipe_merge_scores_in_bfloat16_and_records_the_scoring(run_main, tmp_path, digits_pair):
    _, _, paths = digits_pair
    res = run_main("merge", *paths, "--archive", "recipes", "--scoring-dtype", "bfloat16", "--forward-passes", 40,
                   "--batch", 2, "--out", tmp_path / "o", "--quiet", "--no-checkpoint")
    assert res.returncode == 0, res.stderr
    scoring = json.loads((tmp_path / "o" / "results.json").read_text())["execution"]["scoring"]
    assert scoring["dtype"] == "bfloat16" and scoring["children_scored"] == 42 and scoring["seconds_per_child"] > 0
    assert scoring["peak_host_rss_bytes"] > 0
    res = run_main("merge", *paths, "--scoring-dtype", "bfloat16", "--forward-passes", 20, "--out", tmp_path / "d",
                   "--quiet")
    assert_one_line_error(res, "--scoring-dtype bfloat16 applies to --archive recipes only")
