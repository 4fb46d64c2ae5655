#!/usr/bin/env bash
# The paper's two comparisons with the baselines (issue 3), seeds 42-51.
#   1. From pre-trained models: merge the cached pair for 10,000 forward passes (no mutation).
#   2. From scratch: MAP-Elites and the evosax strategies for 50,000 forward passes
#      (the M2N2 family comes from experiments/reproduce_digits.sh), full CMA-ES for a short,
#      labelled budget (one 50k run costs hours on a CPU, see docs/baselines.md).
# Budgets can be shortened with FP_ES (sep-CMA-ES), FP_OTHER (LM-MA-ES, Open-ES, SimpleGA) and
# FP_CMA (full CMA-ES); M2N2 overrides the command (default: m2n2).
set -euo pipefail
m2n2=${M2N2:-m2n2}
out=${1:-docs/results}
$m2n2 compare --task digits --init pretrained --runs 10 --seed 42 \
  --methods m2n2,m2n2-no-attraction,m2n2-no-split-point,map-elites,ga,brute-force \
  --title "digits from pre-trained models, 10 runs (seeds 42-51), 10k forward passes" --out "$out/digits-from-pretrained"
scratch="$out/digits-baselines-from-scratch"
$m2n2 evolve --task digits --method map-elites --runs 10 --forward-passes 50000 --out "$scratch/map-elites" --overwrite --quiet
$m2n2 evolve --task digits --method sep-cma-es --runs 10 --forward-passes "${FP_ES:-50000}" --out "$scratch/sep-cma-es" --overwrite --quiet
for method in lm-ma-es open-es simple-ga; do
  $m2n2 evolve --task digits --method "$method" --runs 10 --forward-passes "${FP_OTHER:-50000}" --out "$scratch/$method" --overwrite --quiet
done
$m2n2 evolve --task digits --method cma-es --runs "${RUNS_CMA:-1}" --forward-passes "${FP_CMA:-1000}" --log-every 100 --out "$scratch/cma-es" --overwrite --quiet
