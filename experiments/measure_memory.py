"""Peak RSS of `m2n2 merge` / `m2n2 evolve` against m2n2_jax.engine.memory's estimate (docs/memory.md).

    python experiments/measure_memory.py OUT_DIR --case CASE [--gguf PATH --data fit.jsonl]

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

import jax
import numpy as np

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
    from m2n2_jax.tasks.digits import digits_pretrained_pair

    paths = []
    for i, v in enumerate(np.asarray(digits_pretrained_pair())):
        paths.append(os.path.join(out, f"digits{i}.npy"))
        np.save(paths[-1], v)
    return paths


def llama30m(out: str, gguf: str) -> list[str]:
    """Two random ~31M-parameter Llamas (hidden 384, 8 layers, SmolLM2's tokenizer and 49,152-token
    vocabulary, tied embeddings), the second the first plus noise of std 1e-3, as Hugging Face directories."""
    from transformers import AutoTokenizer

    from m2n2_jax.llm import checkpoint, model
    from m2n2_jax.llm.config import LlamaConfig

    paths = [os.path.join(out, f"llama30m-{name}") for name in "ab"]
    if all(os.path.isdir(p) for p in paths):
        return paths
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    params = model.init_params(config, 0)
    rng = np.random.default_rng(1)
    noisy = jax.tree.map(lambda w: (w + rng.normal(0, 1e-3, w.shape)).astype(np.float32), params)
    for path, p in zip(paths, (params, noisy)):
        checkpoint.save(path, config, p)
        tokenizer.save_pretrained(path)
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}, f)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--case", required=True, choices=("digits-evolve", "digits-merge-dense",
                                                         "digits-merge-recipes", "llama30m-dense",
                                                         "llama30m-recipes", "gguf-recipes", "gguf-default"))
    parser.add_argument("--gguf")
    parser.add_argument("--data")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    common = ["--quiet", "--no-checkpoint", "--overwrite", "--cpu-devices", "1"]
    devices_default, devices, scoring_bytes = min(os.cpu_count() or 1, 8), 1, 0
    if args.case == "digits-evolve":
        cli = ["evolve", "--forward-passes", "300", "--out", os.path.join(args.out, args.case)] + common
        size, inputs, archive_size, archive = 64 * 256 + 256 + 256 * 10 + 10, 2, 20, "dense"
    elif args.case.startswith("digits-merge"):
        archive = args.case.rsplit("-", 1)[1]
        cli = ["merge", *digits_pair(args.out), "--forward-passes", "300", "--archive", archive,
               "--out", os.path.join(args.out, args.case)] + common
        size, inputs, archive_size = 64 * 256 + 256 + 256 * 10 + 10, 2, 20
    else:  # gguf-default: no --archive and the default devices, as a user would run it
        archive = "recipes" if args.case == "gguf-default" else args.case.rsplit("-", 1)[1]
        models = [args.gguf] * 2 if args.case.startswith("gguf") else llama30m(args.out, args.gguf)
        archive_size = 4 if archive == "dense" else 20
        cli = ["merge", *models, "--task", "llm-exact-match", "--task-arg", f"data={args.data}",
               "--forward-passes", "4", "--archive-size", str(archive_size), "--out", os.path.join(args.out, args.case)]
        cli += common if args.case != "gguf-default" else common[:3]
        cli += [] if args.case == "gguf-default" else ["--archive", archive]
        devices = devices_default if args.case == "gguf-default" else 1
        from m2n2_jax.llm.task import exact_match_task

        task = exact_match_task(models[0], args.data)
        size, inputs, scoring_bytes = task.num_params, 2, task.scoring_bytes
        del task
    need = memory.estimate(size, archive, inputs, 1, archive_size, 1, devices, scoring_bytes=scoring_bytes)
    code, peak = peak_rss_of(cli)
    row = {"case": args.case, "params": size, "archive": archive, "archive_size": archive_size, "exit": code,
           "devices": devices, "scoring_gib": round(devices * scoring_bytes / memory.GIB, 3),
           "estimate_gib": round(need.gib, 3), "peak_rss_gib": round(peak / memory.GIB, 3),
           "estimate_over_peak": round(need.bytes / peak, 3)}
    print(json.dumps(row))
    with open(os.path.join(args.out, "memory.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
