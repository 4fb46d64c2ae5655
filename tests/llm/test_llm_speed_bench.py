"""`m2n2 bench --llm` end to end on a tiny Llama directory: every variant runs and gives the same scores."""
import json
import os

import numpy as np

from m2n2_jax import bench_llm
from m2n2_jax.llm import checkpoint, model
from m2n2_jax.llm.config import LlamaConfig


def tiny_model_directory(directory) -> str:
    import tokenizers

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted({w for m, a in bench_llm.example_rows(6) for w in (m + " " + a).split()})
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    checkpoint.save(str(directory), config, model.init_params(config, 0))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": 2, "bos_token_id": 1, "pad_token_id": 0}, f)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
                   "pad_token": "<pad>", "unk_token": "<unk>"}, f)
    return str(directory)


def test_llm_bench_times_every_variant_and_scores_agree(tmp_path):
    directory = tiny_model_directory(tmp_path / "tiny")
    variants = [bench_llm.VARIANTS[0], bench_llm.VARIANTS[-2]]  # before, and all savings in float32
    record = bench_llm.run_llm_benchmark(directory, rows=6, batch_size=4, repeats=1, out=str(tmp_path / "out"),
                                     variants=variants, gemm_size=64)
    assert set(record["best_seconds"]) == {v[0] for v in variants}
    assert all(record["exact_match_equal"][v[0]] == 6 for v in variants)
    assert record["likelihood_relative_change"][variants[1][0]] < 1e-4
    assert record["computed_tokens"][variants[1][0]] < record["computed_tokens"][variants[0][0]]
    with open(tmp_path / "out" / "bench-llm.md") as f:
        table = f.read()
    assert "CPU:" in table and "| all savings, float32 |" in table
    assert np.isfinite(record["useful_flops"]) and record["useful_flops"] > 0
