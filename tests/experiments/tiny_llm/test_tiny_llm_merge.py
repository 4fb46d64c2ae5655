"""The tiny-model experiment's own decoding."""
import jax
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


def test_the_recipe_merge_is_the_same_on_every_run_and_never_rewrites_a_child_handed_to_jax():
    """Same seed, same archive, exactly; and no child's host array changes after it was handed to JAX.

    ``jnp.asarray`` of a numpy array on CPU may still be reading it after it returns (an asynchronous
    transfer, or shared memory): children materialised into one reused buffer could be scored while
    the next child overwrote it, so the M2N2-family rows of the experiment differed from run to run."""
    from m2n2_jax.algorithm import recipes
    from m2n2_jax.methods.registry import method_config

    rng = np.random.default_rng(0)
    seeds = rng.normal(size=(2, 12 << 14)).astype(np.float32)
    targets = jnp.asarray(rng.normal(size=(12, 1 << 14)).astype(np.float32))
    score = jax.jit(lambda x: (jnp.sum(jnp.tanh(x.reshape(12, -1)) * targets, axis=1) > 0).astype(jnp.float32))
    config = method_config("m2n2", mutation_std=0.0, children_per_step=4)

    def run():
        handed = []  # (array materialise returned, its contents then)

        class Recording(recipes.SeedBank):
            def materialise(self, recipe, out=None, chunk=1 << 20):
                x = super().materialise(recipe, out, chunk)
                handed.append((x, x.copy()))
                return x

        built = recipes.SeedBank.build(seeds)
        bank = Recording(built.seeds, built.block, built.prefix)
        archive, curve = pipeline.m2n2_merge(config, bank, score, 40, seed=3)
        assert len(handed) >= 40 and all(np.array_equal(x, then) for x, then in handed)
        return archive, curve

    (a, curve_a), (b, curve_b) = run(), run()
    assert curve_a == curve_b and a.inserted == b.inserted
    np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
    for x, y in zip(a.recipes, b.recipes):
        np.testing.assert_array_equal(x.bounds, y.bounds)
        np.testing.assert_array_equal(x.coeffs, y.coeffs)
