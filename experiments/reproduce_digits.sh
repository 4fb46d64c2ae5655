#!/usr/bin/env bash
# Reproduce the paper's from-scratch digits comparison with the engine (default key order).
# 20 fresh seeds (100-119) of M2N2 for the statistical check against the authors' code,
# then every method on the paper's seeds 42-51. About 21 minutes on a 2-core CPU (the committed
# runs' wall times: 460 s for the 20 fresh seeds, 197-212 s per method; AMD EPYC).
# Writes to runs/digits-from-scratch; `bash experiments/reproduce_digits.sh docs/results/digits-from-scratch`
# regenerates the committed report.
# PRECISION=bfloat16 scores children with bf16 matmuls (see README, "Speed").
set -euo pipefail
out=${1:-runs/digits-from-scratch}
fp=${FP:-50000}
skip_fresh=${SKIP_FRESH:-0}
methods=${METHODS:-m2n2 m2n2-no-crossover ga ga-no-crossover m2n2-no-split-point m2n2-no-attraction}
precision=${PRECISION:-float32}
if [ "$skip_fresh" != 1 ]; then
  m2n2 evolve --task digits --method m2n2 --seed 100 --runs 20 --forward-passes "$fp" --matmul-precision "$precision" --out "$out/m2n2-seeds100-119" --overwrite --quiet --no-checkpoint
fi
for method in $methods; do
  m2n2 evolve --task digits --method "$method" --seed 42 --runs 10 --forward-passes "$fp" --matmul-precision "$precision" --out "$out/$method" --overwrite --quiet --no-checkpoint
done
python experiments/summarise_digits.py "$out"
