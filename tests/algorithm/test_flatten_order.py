"""The flat vector's leaf order: numbered names by number, and Llama checkpoints in depth order."""
import jax
import jax.numpy as jnp
import numpy as np

from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.llm import model
from m2n2_jax.llm.config import LlamaConfig


def test_user_pytree_with_twelve_dense_layers_flattens_in_numeric_order():
    params = {f"Dense_{i}": {"kernel": np.full((2, 2), i, np.float32), "bias": np.full(2, 100 + i, np.float32)}
              for i in range(12)}
    vector = np.asarray(VectorLayout.of(params).ravel(params))
    expected = np.concatenate([np.concatenate([np.full(2, 100 + i), np.full(4, i)]) for i in range(12)])  # a loop
    np.testing.assert_array_equal(vector, expected)


def test_lists_and_tuples_keep_their_own_order():
    params = {"blocks": [np.full(1, 10.0), np.full(1, 2.0)], "a_10": np.zeros(1), "a_9": np.ones(1)}
    np.testing.assert_array_equal(np.asarray(VectorLayout.of(params).ravel(params)), [1, 0, 10, 2])


def hf_state_dict_order(config: LlamaConfig) -> list[tuple[str, ...]]:
    """Flax paths in the order of transformers' own state dict (the reference), via the loader's names."""
    import torch
    import transformers

    from m2n2_jax.llm import checkpoint

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, tie_word_embeddings=False))
    names = checkpoint.hf_names(config)
    return [names[name][0] for name in hf.state_dict() if name in names]


def test_twelve_layer_llama_flattens_in_checkpoint_depth_order_and_round_trips():
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=12,
                         num_attention_heads=2, num_key_value_heads=1)
    params = model.init_params(config, seed=1)
    layout = VectorLayout.of(params, order=model.checkpoint_order(params))
    paths = [tuple(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert [paths[i] for i in layout.order] == hf_state_dict_order(config)
    layers = [int(paths[i][0].split("_")[1]) for i in layout.order if paths[i][0].startswith("layers_")]
    assert layers == sorted(layers)  # layer 2 before layer 10
    # the vector is the leaves concatenated in that order, and unravels to the same model
    leaves = jax.tree.leaves(params)
    vector = layout.ravel(params)
    np.testing.assert_array_equal(np.asarray(vector), np.concatenate([np.ravel(leaves[i]) for i in layout.order]))
    back = layout.unravel(vector)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    tokens = jnp.asarray([[1, 5, 7, 3]])
    np.testing.assert_array_equal(np.asarray(model.apply(config, back, tokens)), np.asarray(model.apply(config, params, tokens)))
