#!/usr/bin/env bash
# The server under load between two raw ONNX Runtime baselines, as BENCHMARKS.md describes:
#   scripts/bench-server.sh OUT_DIR [BINARY]
# Run from the repository root with nothing else busy; needs .venv (onnxruntime, PIL) as
# .ci/run creates it. Writes OUT_DIR/{ort-baseline-before,loadtest,ort-baseline-after}.{json,txt}
# and OUT_DIR/loadtest-report.txt (ratios against both baselines).
set -euo pipefail
out=${1:?usage: scripts/bench-server.sh OUT_DIR [BINARY]}
binary=${2:-target/release/proco-serve}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
"$py" scripts/ort_baseline.py --batch-sizes 1,2,4,8,16 --seconds 5 \
  --json "$out/ort-baseline-before.json" | tee "$out/ort-baseline-before.txt"
python3 scripts/loadtest.py --start --binary "$binary" --clients 1,4,16 --seconds 10 \
  --json "$out/loadtest.json" | tee "$out/loadtest.txt"
"$py" scripts/ort_baseline.py --loadtest "$out/loadtest.json" --seconds 5 \
  --json "$out/ort-baseline-after.json" | tee "$out/ort-baseline-after.txt"
python3 scripts/loadtest.py --report "$out/loadtest.json" \
  --baseline "$out/ort-baseline-before.json" --baseline "$out/ort-baseline-after.json" \
  | tee "$out/loadtest-report.txt"
