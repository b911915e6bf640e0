#!/usr/bin/env bash
# Two server builds under load, interleaved between raw ONNX Runtime baselines, so that both are
# measured in the same minutes of a noisy machine:
#   scripts/bench-compare.sh OUT_DIR BEFORE_BINARY AFTER_BINARY [ROUNDS]
# CLIENTS (default 1,16) sets the concurrency levels, SECONDS_PER_LEVEL (default 8) each level's length.
# Each round: baseline, load test of BEFORE, load test of AFTER; one more baseline at the end.
# Every load test's report gives its ratios against the baselines right before and after it.
set -euo pipefail
out=${1:?usage: scripts/bench-compare.sh OUT_DIR BEFORE_BINARY AFTER_BINARY [ROUNDS]}
before=${2:?}; after=${3:?}; rounds=${4:-2}; clients=${CLIENTS:-1,16}; seconds=${SECONDS_PER_LEVEL:-8}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
baseline() { "$py" scripts/ort_baseline.py --batch-sizes 1,8 --seconds 5 --json "$out/ort-$1.json" > "$out/ort-$1.txt"; }
baseline 0
for r in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$before; [ "$which" = after ] && bin=$after
    python3 scripts/loadtest.py --start --binary "$bin" --clients "$clients" --seconds "$seconds" \
      --json "$out/loadtest-$r-$which.json" > "$out/loadtest-$r-$which.txt"
  done
  baseline "$r"
done
for r in $(seq 1 "$rounds"); do
  for which in before after; do
    echo "## round $r, $which"
    python3 scripts/loadtest.py --report "$out/loadtest-$r-$which.json" \
      --baseline "$out/ort-$((r-1)).json" --baseline "$out/ort-$r.json" | tee "$out/loadtest-$r-$which-report.txt"
  done
done
