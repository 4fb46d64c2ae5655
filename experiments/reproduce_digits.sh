#!/usr/bin/env bash
# Reproduce the paper's from-scratch digits comparison with the engine (default key order).
# 20 fresh seeds (100-119) of M2N2 for the statistical check against the authors' code,
# then every method on the paper's seeds 42-51. About 45 minutes on a 2-core CPU.
set -euo pipefail
out=${1:-docs/results/digits-from-scratch}
fp=${FP:-50000}
m2n2 evolve --task digits --method m2n2 --seed 100 --runs 20 --forward-passes "$fp" --out "$out/m2n2-seeds100-119" --overwrite --quiet
for method in m2n2 m2n2-no-crossover m2n2-no-split-point m2n2-no-attraction ga ga-no-crossover; do
  m2n2 evolve --task digits --method "$method" --seed 42 --runs 10 --forward-passes "$fp" --out "$out/$method" --overwrite --quiet
done
python experiments/summarise_digits.py "$out"
