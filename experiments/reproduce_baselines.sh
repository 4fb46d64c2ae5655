#!/usr/bin/env bash
# The paper's two comparisons with the baselines (issue 3), seeds 42-51; regenerates
# docs/results/digits-from-pretrained and docs/results/digits-vs-baselines-from-scratch.
#   1. From pre-trained models: merge the cached pair for 10,000 forward passes (no mutation).
#   2. From scratch: MAP-Elites, sep-CMA-ES and GA for 50,000 forward passes; LM-MA-ES, Open-ES and
#      SimpleGA for FP_OTHER (10,000 in the committed report, CPU time); full CMA-ES for FP_CMA
#      (600: one 50k run costs hours on a CPU, see docs/baselines.md). The M2N2 family comes from
#      experiments/reproduce_digits.sh (docs/results/digits-from-scratch/METHOD).
# About 1.5 hours on the shared 2-core CPU. M2N2 overrides the command (default: m2n2).
# Writes under runs/ (the first argument overrides it); `bash experiments/reproduce_baselines.sh docs/results`
# regenerates the committed reports.
set -euo pipefail
m2n2=${M2N2:-m2n2}
out=${1:-runs}
$m2n2 compare --task digits --init pretrained --runs 10 --seed 42 \
  --methods m2n2,m2n2-no-attraction,m2n2-no-split-point,map-elites,ga,brute-force \
  --title "digits from pre-trained models, 10 runs (seeds 42-51), 10k forward passes" --out "$out/digits-from-pretrained"
scratch="$out/digits-baselines-from-scratch"
$m2n2 evolve --task digits --method cma-es --runs 1 --forward-passes "${FP_CMA:-600}" --log-every 100 --out "$scratch/cma-es" --overwrite --quiet
for method in map-elites sep-cma-es; do
  $m2n2 evolve --task digits --method "$method" --runs 10 --forward-passes 50000 --out "$scratch/$method" --overwrite --quiet
done
for method in lm-ma-es open-es simple-ga; do
  $m2n2 evolve --task digits --method "$method" --runs 10 --forward-passes "${FP_OTHER:-10000}" --out "$scratch/$method" --overwrite --quiet
done
$m2n2 evolve --task digits --method ga --runs 10 --forward-passes 50000 --out "$scratch/ga" --overwrite --quiet
