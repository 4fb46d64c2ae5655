"""The tiny-model experiment's own decoding."""
import jax.numpy as jnp
import numpy as np

from experiments.tiny_llm import pipeline
from m2n2_jax.llm import generate, model
from m2n2_jax.llm.config import LlamaConfig


def test_the_experiments_cache_free_decoding_equals_the_librarys_greedy():
    config = LlamaConfig(vocab_size=13, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    params = model.init_params(config, 4)
    prompts = [[1, 5, 6, 7], [1, 8], [1, 3, 3]]
    tokens = np.zeros((3, 8), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    out = np.asarray(pipeline.greedy_generate(config, params, jnp.asarray(tokens),
                                              jnp.asarray([len(p) for p in prompts]), 4, eos_id=2))
    for row, want in zip(out, generate.greedy(config, params, prompts, 4, eos_ids=2)):
        assert row.tolist() == want + [0] * (4 - len(want))  # padded after <eos>
