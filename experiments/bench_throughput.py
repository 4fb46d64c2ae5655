"""Throughput of the M2N2 engine against the per-child loop (see m2n2_jax/bench.py).

    python experiments/bench_throughput.py [--forward-passes 2000] [--out DIR]
"""
import sys

from m2n2_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
