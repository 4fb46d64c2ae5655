"""Re-run issue 12's table: tiny random checkpoints saved by transformers, loaded by the project.

Prints one Markdown row per case: max |logit difference| against transformers (float32) and
argmax agreement, or the one-line refusal. Needs the test extra (torch, transformers).
"""
import json
import os
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from m2n2_jax.errors import M2N2Error
from m2n2_jax.llm import checkpoint, model

BASE = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
CASES = [
    ("Llama, transformers 5 layout, rope_theta 500000", "LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), None),
    ("Llama 3.x rope scaling, 5.x layout", "LlamaConfig", dict(rope_parameters={**LLAMA3, "rope_theta": 500000.0}), None),
    ("Llama 3.x rope scaling, 4.x layout (hand-written)", "LlamaConfig", dict(rope_parameters={**LLAMA3, "rope_theta": 500000.0}),
     {"rope_theta": 500000.0, "rope_scaling": LLAMA3}),
    ("attention_bias + mlp_bias, head_dim 32", "LlamaConfig", dict(attention_bias=True, mlp_bias=True, head_dim=32), None),
    ("hidden_act gelu", "LlamaConfig", dict(hidden_act="gelu"), None),
    ("Mistral, sliding_window 8", "MistralConfig", dict(sliding_window=8), None),
    ("Qwen2 (q/k/v biases)", "Qwen2Config", dict(), None),
    ("Qwen3 (q/k norms)", "Qwen3Config", dict(head_dim=16), None),
]


def main():
    rows = ["| case | outcome |", "|---|---|"]
    tokens = np.random.default_rng(0).integers(3, 64, (4, 40))
    for name, cls, extra, layout4 in CASES:
        torch.manual_seed(0)
        m = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**BASE, **extra)).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
        d = tempfile.mkdtemp()
        m.save_pretrained(d)
        if layout4:
            cfg = json.load(open(os.path.join(d, "config.json")))
            cfg.pop("rope_parameters")
            cfg.update(layout4)
            json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
            m = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
        try:
            config, params = checkpoint.load(d)
        except M2N2Error as err:
            rows.append(f"| {name} | refused: `{err}` |")
            continue
        with torch.no_grad():
            want = m(torch.tensor(tokens)).logits.numpy()
        got = np.asarray(model.forward(config, params, jnp.asarray(tokens)))
        out = tempfile.mkdtemp()
        checkpoint.save(out, config, params, like=d)
        same_config = json.load(open(os.path.join(out, "config.json"))) == json.load(open(os.path.join(d, "config.json")))
        rows.append(f"| {name} | max abs logit diff {np.abs(got - want).max():.1e}, argmax agreement "
                    f"{(got.argmax(-1) == want.argmax(-1)).mean():.0%}; written config.json identical: {same_config} |")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
