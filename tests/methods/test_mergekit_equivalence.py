"""``m2n2 merge --config`` against mergekit 0.1.5 itself, tensor by tensor, on a tiny random Llama.

The same YAML runs through mergekit's Python API (CPU) and through
:mod:`m2n2_jax.methods.mergekit_config`; every deterministic method must give
every tensor within 1e-6 of mergekit's (relative to the tensor's largest
entry; bfloat16: one bfloat16 rounding step). DARE and DELLA draw their masks
from another generator, so they are checked on what does not depend on it:
the kept fraction, each tensor's L1 norm after rescaling, and that only
entries where a task vector is nonzero move.
"""
import os

import numpy as np
import pytest

mergekit = pytest.importorskip("mergekit", reason="mergekit is in the test extra (setup.cfg)")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from m2n2_jax.errors import ConfigError  # noqa: E402
from m2n2_jax.methods import mergekit_config as mc  # noqa: E402

LAYERS = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random Llama (base) and two fine-tune-like variants with correlated task vectors, as HF dirs."""
    root = tmp_path_factory.mktemp("mergekit")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config)
    paths = {"base": str(root / "base")}
    base.save_pretrained(paths["base"])
    rng = np.random.default_rng(0)
    state = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
    shared = {k: rng.normal(size=v.shape) for k, v in state.items()}
    for name, mix in (("a", 0.6), ("b", -0.3)):
        variant = transformers.LlamaForCausalLM(config)
        variant.load_state_dict({k: torch.tensor((v + 0.02 * (mix * shared[k] + rng.normal(size=v.shape))
                                                  ).astype(np.float32)) for k, v in state.items()})
        paths[name] = str(root / name)
        variant.save_pretrained(paths[name])
    paths["root"] = str(root)
    return paths


def run_mergekit(yaml_text, out):
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(yaml.safe_load(yaml_text)), out,
              options=MergeOptions(device="cpu", copy_tokenizer=False, write_model_card=False, quiet=True,
                                   random_seed=0))
    return mc.Checkpoint(out)


def run_ours(yaml_text, out):
    mc.run_merge(mc.parse(yaml_text), out)
    return mc.Checkpoint(out)


def both(models, yaml_text, name):
    text = yaml_text.format(**models)
    theirs = run_mergekit(text, os.path.join(models["root"], f"mk-{name}"))
    ours = run_ours(text, os.path.join(models["root"], f"ours-{name}"))
    assert sorted(ours.names()) == sorted(theirs.names())
    return ours, theirs


def assert_close(ours, theirs, rel=1e-6):
    for name in theirs.names():
        want = np.asarray(theirs.get(name), np.float64)
        got = np.asarray(ours.get(name), np.float64)
        assert got.shape == want.shape and ours.dtype(name) == theirs.dtype(name), name
        scale = max(np.abs(want).max(), 1e-30)
        assert np.abs(got - want).max() <= rel * scale, (name, np.abs(got - want).max() / scale)


BASE_MODELS = """
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.7, density: 0.5}}
  - model: {b}
    parameters: {{weight: [0.2, 1.0], density: 0.6}}
dtype: float32
"""

DETERMINISTIC = {
    "linear": """
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 1.0}}
  - model: {a}
    parameters:
      weight: [{{filter: self_attn, value: 2.0}}, {{value: 0.5}}]
  - model: {b}
    parameters: {{weight: [0.0, 1.0, 3.0]}}
dtype: float32
""",
    "slerp": """
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {a}
parameters:
  t: [{{filter: mlp, value: [0.1, 0.9]}}, {{value: 0.3}}]
dtype: float32
""",
    "task_arithmetic": "merge_method: task_arithmetic\nparameters: {{lambda: 0.8}}" + BASE_MODELS,
    "ties": "merge_method: ties" + BASE_MODELS,
    "ties_unnormalized": "merge_method: ties\nparameters: {{normalize: false, lambda: 1.2}}" + BASE_MODELS,
    "breadcrumbs": "merge_method: breadcrumbs\nparameters: {{lambda: 0.9}}" + BASE_MODELS,
    "breadcrumbs_ties": "merge_method: breadcrumbs_ties\nparameters: {{gamma: 0.05}}" + BASE_MODELS,
    "model_stock": "merge_method: model_stock\nbase_model: {base}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n"
                   "dtype: float32\n",
    "model_stock_filter_wise": "merge_method: model_stock\nbase_model: {base}\nmodels: [{{model: {a}}}, "
                               "{{model: {b}}}]\nparameters: {{filter_wise: true}}\ndtype: float32\n",
    "multislerp": "merge_method: multislerp\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: "
                  "{{weight: 0.3}}\n  - model: {b}\n    parameters: {{weight: 0.7}}\ndtype: float32\n",
    "karcher": "merge_method: karcher\nmodels: [{{model: {base}}}, {{model: {a}}}, {{model: {b}}}]\n"
               "dtype: float32\n",
}


BIT_IDENTICAL = {"linear", "task_arithmetic", "ties", "ties_unnormalized", "breadcrumbs", "breadcrumbs_ties"}


@pytest.mark.parametrize("method", sorted(DETERMINISTIC))
def test_deterministic_methods_match_mergekit(models, method):
    ours, theirs = both(models, DETERMINISTIC[method], method)
    assert_close(ours, theirs, rel=0 if method in BIT_IDENTICAL else 1e-6)


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_bfloat16_merges_match_mergekit_within_one_rounding(models, method):
    """Computed in bfloat16 as the YAML's dtype says; density 1, since bfloat16 magnitudes tie at the cut
    often and mergekit orders ties by torch's unstable sort (see classic_merges.magnitude_masks)."""
    text = (f"merge_method: {method}" + BASE_MODELS).replace("dtype: float32", "dtype: bfloat16\nout_dtype: bfloat16")
    text = text.replace("density: 0.5", "density: 1.0").replace("density: 0.6", "density: 1.0")
    ours, theirs = both(models, text, f"{method}-bf16")
    assert all(ours.dtype(n) == "bfloat16" for n in ours.names())
    assert_close(ours, theirs, rel=2 ** -7)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_keep_the_fraction_l1_and_support(models, method):
    text = f"merge_method: {method}\nparameters: {{{{rescale: true, normalize: false}}}}" + BASE_MODELS.replace(
        "weight: [0.2, 1.0], density: 0.6", "weight: 1.0, density: 0.6").replace(
        "weight: 0.7, density: 0.5", "weight: 0.0, density: 0.5")          # only model b counts: its L1 is exact
    out = os.path.join(models["root"], f"ours-{method}")
    merged = run_ours(text.format(**models), out)
    base, b = mc.Checkpoint(models["base"]), mc.Checkpoint(models["b"])
    kept = total = 0
    for name in base.names():
        tau = np.asarray(b.get(name), np.float64) - np.asarray(base.get(name), np.float64)
        moved = np.asarray(merged.get(name), np.float64) - np.asarray(base.get(name), np.float64)
        assert np.all(moved[tau == 0] == 0), name                               # only task-vector entries move
        nonzero = moved != 0
        assert np.all(np.sign(moved[nonzero]) == np.sign(tau[nonzero])), name   # kept entries keep their sign
        np.testing.assert_allclose(np.abs(moved).sum(), np.abs(tau).sum(), rtol=1e-5, err_msg=name)
        kept += nonzero.sum()
        total += tau.size
    assert abs(kept / total - 0.6) < 0.01                                       # the density, on average


def test_unsupported_keys_and_missing_weight_are_refused(models):
    with pytest.raises(ConfigError, match="unsupported key.*slices"):
        mc.parse("merge_method: ties\nslices: []\nmodels: [{model: a}]")
    with pytest.raises(ConfigError, match="no parameter.*densty"):
        mc.parse("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {densty: 0.5}}]")
    config = mc.parse(("merge_method: ties\nbase_model: {base}\nmodels: [{{model: {a}, parameters: {{density: 0.5}}}}]"
                       ).format(**models))
    with pytest.raises(ConfigError, match="weight is required"):
        mc.run_merge(config, os.path.join(models["root"], "refused"))


def test_gradients_and_filters_resolve_as_mergekit():
    assert mc.evaluate([0.0, 1.0, 0.0], "x", 0.25) == pytest.approx(0.5)
    assert mc.evaluate([{"filter": "mlp", "value": [1.0, 3.0]}, {"value": 7}], "layers.1.mlp.up", 0.5) == 2.0
    assert mc.evaluate([{"filter": "mlp", "value": 1.0}, {"value": 7}], "layers.1.self_attn.q", 0.5) == 7
    assert mc.layer_position("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert mc.layer_position("model.embed_tokens.weight", 5) == 0.0
