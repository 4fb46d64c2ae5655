"""One run identity for every family: a resume with other inputs, data or settings is refused in one line.

Held-out style: the recipe archive used to resume from any checkpoint (its identity fell back
to an empty dict), and no family noticed a data file edited between the start and the resume.
"""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from m2n2_jax.engine import identity
from m2n2_jax.engine.chunk_loop import RunOptions
from m2n2_jax.errors import ConfigError
from m2n2_jax.io import model_files
from m2n2_jax.methods import registry
from m2n2_jax.methods.merge_models import with_seed_models
from m2n2_jax.tasks.custom import custom_task

PLUGIN = '''
import json
import jax.numpy as jnp
import numpy as np
from m2n2_jax.tasks.custom import custom_task

def make(data):
    """A linear classifier scored on the points of a JSON file {"x": [[...]], "y": [...]}."""
    with open(data) as f:
        rows = json.load(f)
    x, y = np.asarray(rows["x"], np.float32), np.asarray(rows["y"])
    score = lambda p: (jnp.argmax(x @ p["w"], axis=1) == y).astype(jnp.float32)
    return custom_task("from-file", {"w": np.zeros((4, 3), np.float32)}, score, info={"data": data})
'''


def write_data(path, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 4))
    path.write_text(json.dumps({"x": x.tolist(), "y": np.argmax(x @ rng.normal(size=(4, 3)), 1).tolist()}))
    return str(path)


def make_task(data):
    namespace = {}
    exec(PLUGIN, namespace)
    return namespace["make"](data)


def models(scale=1.0):
    return (np.random.default_rng(5).normal(size=(2, 12)) * scale).astype(np.float32)


def start_and_cut(tmp_path, archive, data, inputs, **settings):
    """A merge of 40 forward passes with a checkpoint every 20, as if killed after the first."""
    out = str(tmp_path / archive)
    run = registry.prepare("m2n2", with_seed_models(make_task(data), inputs), [0], 40, init="pretrained",
                           log_every=10, archive=archive, **settings)
    run(RunOptions.saving(out, every=20))
    shutil.rmtree(os.path.join(out, "checkpoints", "40"))
    return out


def resume(out, archive, data, inputs, **settings):
    run = registry.prepare("m2n2", with_seed_models(make_task(data), inputs), [0], 40, init="pretrained",
                           log_every=10, archive=archive, **settings)
    return run(RunOptions.saving(out, every=20, resume=True))


@pytest.mark.parametrize("archive", ["dense", "recipes"])
def test_a_resume_with_other_inputs_data_or_settings_is_refused_in_one_line(tmp_path, archive):
    data = write_data(tmp_path / "fit.json", 0)
    out = start_and_cut(tmp_path, archive, data, models())
    changes = {"inputs": (data, models(1.01), {}), "data": (None, models(), {}),
               "settings": (data, models(), {"alpha": 0.5})}
    needles = {"inputs": "the input models changed", "data": "the task's data changed",
               "settings": "config.alpha (checkpoint 1.0, now 0.5)"}
    for what, (path, inputs, settings) in changes.items():
        if path is None:  # the same file name, other contents
            original = open(data).read()
            write_data(tmp_path / "fit.json", 1)
            path = data
        try:
            with pytest.raises(ConfigError) as err:
                resume(out, archive, path, inputs, **settings)
        finally:
            if what == "data":
                (tmp_path / "fit.json").write_text(original)
        message = str(err.value)
        assert "\n" not in message and needles[what] in message, (what, message)
    resumed = resume(out, archive, data, models())  # the original run resumes
    assert resumed.forward_passes[-1] == 40


def test_every_family_builds_the_same_identity(tmp_path):
    data = write_data(tmp_path / "fit.json", 0)
    task = make_task(data)
    a = identity.run_identity({"alpha": 1.0}, task, [0], 40, 10, models())
    assert set(a) == {"config", "task", "seeds", "forward_passes", "log_every", "archive", "inputs", "data"}
    assert a == identity.run_identity({"alpha": 1.0}, task, [0], 40, 10, models())
    scores = np.stack([task.score_vector(jnp.asarray(m)) for m in models()])
    assert identity.run_identity({}, task, [0], 40, 10, models(), start_scores=scores)["data"] != a["data"]


def test_cli_resume_of_a_recipe_merge_with_edited_data_ends_in_one_line(run_main, tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    data = write_data(tmp_path / "fit.json", 0)
    task = make_task(data)
    paths = [model_files.save_model(str(tmp_path / f"m{i}.npy"), m, task.layout) for i, m in enumerate(models())]
    out = tmp_path / "o"
    res = run_main("merge", *paths, "--task", f"{plugin}:make", "--task-arg", f"data={data}", "--archive", "recipes",
                   "--forward-passes", 40, "--checkpoint-every", 20, "--log-every", 10, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    shutil.rmtree(out / "checkpoints" / "40")
    os.remove(out / "results.json")
    write_data(tmp_path / "fit.json", 1)
    res = run_main("merge", "--resume", out, "--quiet")
    lines = res.stderr.strip().splitlines()  # the start banner, then the one-line refusal
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(lines) == 2, res.stderr
    assert lines[1].startswith("m2n2: error:") and "the task's data changed" in lines[1]
