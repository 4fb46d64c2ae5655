#!/usr/bin/env bash
# The CLI of a two-process run on one machine (docs/multi-device.md), in both modes, against one process:
# writes runs/multihost/{runs,children}-{one,two}/ and prints the results.json fields that differ.
# Usage: experiments/multihost_cli.sh [M2N2=.venv/bin/m2n2]
set -euo pipefail
M2N2=${1:-.venv/bin/m2n2}
OUT=runs/multihost
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for mode in runs children; do
  if [ "$mode" = runs ]; then opts="--runs 4 --batch 1"; else opts="--runs 1 --batch 2"; fi
  common="evolve $opts --forward-passes 2000 --cpu-devices 1 --quiet --overwrite"
  $M2N2 $common --out "$OUT/$mode-one"
  port=$(free_port)
  $M2N2 $common --out "$OUT/$mode-two" --coordinator 127.0.0.1:$port --num-processes 2 --process-id 0 &
  first=$!
  $M2N2 $common --out "$OUT/$mode-two" --coordinator 127.0.0.1:$port --num-processes 2 --process-id 1
  wait $first
  python3 - "$OUT/$mode-one/results.json" "$OUT/$mode-two/results.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
print(f"{sys.argv[2]}: fields differing from one process: {differ}; execution {b['execution']}")
PY
done
