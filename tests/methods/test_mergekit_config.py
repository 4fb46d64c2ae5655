"""``m2n2 merge --config``: the YAML schema, the output layout and M2N2 from a YAML (no mergekit needed).

Numbers against mergekit itself: test_mergekit_equivalence.py.
"""
import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from m2n2_jax.cli import main
from m2n2_jax.errors import ConfigError
from m2n2_jax.methods import mergekit_config as mc
from m2n2_jax.methods import tensor_merges as tm

NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight",
         "model.layers.1.self_attn.q_proj.weight"]


def write_model(path, seed, base=None):
    rng = np.random.default_rng(seed)
    tensors = {n: (rng.normal(size=(6, 5)) if base is None else base[n] + 0.1 * rng.normal(size=(6, 5))
                   ).astype(np.float32) for n in NAMES}
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"num_hidden_layers": 2, "torch_dtype": "float32"}, f)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write("{}")
    return tensors


@pytest.fixture()
def toy(tmp_path):
    base = write_model(str(tmp_path / "base"), 0)
    return tmp_path, base, write_model(str(tmp_path / "a"), 1, base), write_model(str(tmp_path / "b"), 2, base)


def test_cli_writes_mergekit_layout_with_gradients_and_filters(toy, capsys):
    tmp, base, a, b = toy
    (tmp / "m.yml").write_text(f"""
merge_method: task_arithmetic
base_model: {tmp}/base
models:
  - model: {tmp}/a
    parameters: {{weight: [0.0, 2.0]}}
  - model: {tmp}/b
    parameters:
      weight: [{{filter: self_attn, value: 3.0}}, {{value: 1.0}}]
dtype: float32
out_dtype: bfloat16
""")
    assert main(["merge", "--config", str(tmp / "m.yml"), "--out", str(tmp / "out")]) == 0
    assert sorted(os.listdir(tmp / "out")) == ["README.md", "config.json", "mergekit_config.yml", "model.safetensors",
                                                "tokenizer.json"]
    assert json.load(open(tmp / "out" / "config.json"))["torch_dtype"] == "bfloat16"
    got = mc.Checkpoint(str(tmp / "out"))
    # layer 0 of 2 at t = 0, layer 1 at t = 1, embeddings at t = 0; the filter picks self_attn
    weights = {NAMES[0]: (0.0, 1.0), NAMES[1]: (0.0, 1.0), NAMES[2]: (2.0, 1.0), NAMES[3]: (2.0, 3.0)}
    for name, (wa, wb) in weights.items():
        want = base[name] + wa * (a[name] - base[name]) + wb * (b[name] - base[name])
        assert got.dtype(name) == "bfloat16"
        np.testing.assert_allclose(np.asarray(got.get(name), np.float32), want.astype(ml_dtypes.bfloat16)
                                   .astype(np.float32), rtol=1e-2, atol=1e-2)


def test_cli_refuses_unsupported_keys_in_one_line(toy, capsys):
    tmp, *_ = toy
    (tmp / "bad.yml").write_text(f"merge_method: ties\nbase_model: {tmp}/base\nmodels: [{{model: {tmp}/a}}]\n"
                                 "tokenizer: {source: union}\n")
    assert main(["merge", "--config", str(tmp / "bad.yml"), "--out", str(tmp / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unsupported key(s) tokenizer" in err


def test_m2n2_yaml_becomes_the_merge_command_line():
    config = mc.parse("merge_method: m2n2:ga\nmodels: [{model: x.npy}, {model: y.npy}]\n"
                      "parameters: {task: digits, forward_passes: 100, task_args: {k: v}, seed: 3}")
    assert mc.m2n2_arguments(config, "runs/o") == ["x.npy", "y.npy", "--method", "ga", "--task", "digits",
                                                   "--forward-passes", "100", "--seed", "3", "--task-arg", "k=v",
                                                   "--out", "runs/o"]
    with pytest.raises(ConfigError, match="no parameter.*budget"):
        mc.m2n2_arguments(mc.parse("merge_method: m2n2\nmodels: [x, y]\nparameters: {budget: 3}"), None)


def test_magnitude_mask_keeps_count_and_breaks_ties_by_index():
    delta = np.array([1.0, -2.0, 2.0, 0.5, 2.0, -1.0], np.float32)
    assert tm.magnitude_mask(delta, 0.5).tolist() == [False, True, True, False, True, False]
    assert tm.magnitude_mask(delta, 0.34).tolist() == [False, True, True, False, False, False]
    assert tm.magnitude_mask(delta, 0.01).sum() == 1          # keeps at least one (mergekit 0.1.5)


def test_random_methods_are_reproducible(toy):
    tmp, *_ = toy
    text = (f"merge_method: dare_ties\nbase_model: {tmp}/base\nmodels:\n  - model: {tmp}/a\n    parameters: "
            f"{{weight: 1, density: 0.5}}\n  - model: {tmp}/b\n    parameters: {{weight: 1, density: 0.5}}\n")
    outs = [mc.run_merge(mc.parse(text), str(tmp / f"r{i}")) and mc.Checkpoint(str(tmp / f"r{i}")) for i in range(2)]
    for name in NAMES:
        np.testing.assert_array_equal(outs[0].get(name), outs[1].get(name))


def test_outlier_mask_equals_a_stable_sort_window():
    rng = np.random.default_rng(5)
    for n, density, gamma in [(1000, 0.5, 0.01), (37, 0.3, 0.1), (200, 0.9, 0.2), (50, 0.02, 0.0)]:
        delta = rng.integers(-4, 5, size=n).astype(np.float32)          # many equal magnitudes
        order = np.argsort(np.abs(delta), kind="stable")
        target, top = int(density * n), int(gamma * n)
        bottom = max(0, n - target - top)
        want = np.zeros(n, bool)
        want[order[bottom:bottom + target]] = True
        np.testing.assert_array_equal(tm.outlier_mask(delta, density, gamma), want)
