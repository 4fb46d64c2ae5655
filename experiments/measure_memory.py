"""Peak RSS of `m2n2 merge` / `m2n2 evolve` against m2n2_jax.engine.memory's estimate (docs/memory.md).

    python experiments/measure_memory.py OUT_DIR [--llama30m] [--gguf PATH --data fit.jsonl]

Each case runs the CLI in a child process and reads its peak RSS (getrusage of the children);
the estimate is what the CLI computes before the run starts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from m2n2_jax.engine import memory  # noqa: E402


def peak_rss_of(args: list[str]) -> tuple[int, float]:
    """(exit status, peak RSS in bytes) of ``m2n2 ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "m2n2_jax", *args], env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    if after <= before:
        print("note: an earlier child had a higher peak; run the cases one per process", file=sys.stderr)
    return proc.returncode, after * 1024


def digits_pair(out: str) -> list[str]:
    import numpy as np

    from m2n2_jax.tasks.digits import digits_pretrained_pair

    paths = []
    for i, v in enumerate(np.asarray(digits_pretrained_pair())):
        paths.append(os.path.join(out, f"digits{i}.npy"))
        np.save(paths[-1], v)
    return paths


def llama30m(out: str, gguf: str) -> str:
    """A random ~30M-parameter Llama with SmolLM2's tokenizer, as a Hugging Face directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = os.path.join(out, "llama30m")
    if os.path.isdir(path):
        return path
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--case", required=True, choices=("digits-evolve", "digits-merge-dense",
                                                         "digits-merge-recipes", "llama30m-dense",
                                                         "llama30m-recipes", "gguf-recipes"))
    parser.add_argument("--gguf")
    parser.add_argument("--data")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    common = ["--quiet", "--no-checkpoint", "--overwrite", "--cpu-devices", "1"]
    if args.case == "digits-evolve":
        cli = ["evolve", "--forward-passes", "300", "--out", os.path.join(args.out, args.case)] + common
        size, inputs, archive_size, archive = 64 * 256 + 256 + 256 * 10 + 10, 2, 20, "dense"
    elif args.case.startswith("digits-merge"):
        archive = args.case.rsplit("-", 1)[1]
        cli = ["merge", *digits_pair(args.out), "--forward-passes", "300", "--archive", archive,
               "--out", os.path.join(args.out, args.case)] + common
        size, inputs, archive_size = 64 * 256 + 256 + 256 * 10 + 10, 2, 20
    else:
        archive = args.case.rsplit("-", 1)[1]
        model = args.gguf if args.case.startswith("gguf") else llama30m(args.out, args.gguf)
        archive_size = 4 if archive == "dense" else 20
        cli = ["merge", model, model, "--task", "llm-exact-match", "--task-arg", f"data={args.data}",
               "--forward-passes", "4", "--archive", archive, "--archive-size", str(archive_size),
               "--out", os.path.join(args.out, args.case)] + common
        from m2n2_jax.io.model_files import load_model  # noqa: F401  (the size comes from the model itself)
        from m2n2_jax.llm import checkpoint

        _, params = checkpoint.load(model)
        import jax

        size, inputs = sum(x.size for x in jax.tree.leaves(params)), 2
        del params
    need = memory.estimate(size, archive, inputs, 1, archive_size, 1, 1)
    code, peak = peak_rss_of(cli)
    row = {"case": args.case, "params": size, "archive": archive, "archive_size": archive_size, "exit": code,
           "estimate_gib": round(need.gib, 3), "peak_rss_gib": round(peak / memory.GIB, 3),
           "estimate_over_peak": round(need.bytes / peak, 3)}
    print(json.dumps(row))
    with open(os.path.join(args.out, "memory.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
