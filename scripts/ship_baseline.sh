#!/usr/bin/env bash
# Ships a finished baseline run (LA, CE or LDAM-DRW) beside the bundled ProCo model: its encoder as
# models/cifar10-lt/baselines/<method>.onnx and its log, the servable folder models/cifar10-lt-<method>/
# (prototypes and temperatures fitted on the validation split), then REPORT.md and COMPARISON.md.
# The ProCo model, its prototypes and the parity fixtures are not touched.
#
#   scripts/ship_baseline.sh la train/checkpoints/cifar10-png ../shared/data/cifar10-png.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."

METHOD=${1:?usage: scripts/ship_baseline.sh la|ce|ldam RUNS ARCHIVE}
RUNS=${2:?usage: scripts/ship_baseline.sh la|ce|ldam RUNS ARCHIVE}
ARCHIVE=${3:?usage: scripts/ship_baseline.sh la|ce|ldam RUNS ARCHIVE}
PY=.venv/bin/python
[ -f "$RUNS/$METHOD.pt" ] || { echo "$RUNS/$METHOD.pt not found: the run has not finished" >&2; exit 1; }
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

step "export the $METHOD encoder and log"
$PY -m train export --runs "$RUNS" --methods "$METHOD" --data "$ARCHIVE"
if [ -d "models/cifar10-lt-$METHOD" ]; then
  step "the servable folder models/cifar10-lt-$METHOD"
  $PY -m train.serve_baseline --method "$METHOD" --data "$ARCHIVE"
fi
step "REPORT.md and COMPARISON.md"
$PY -m train report --data "$ARCHIVE"
python3 scripts/comparison_table.py
step "done: review git diff, then cargo test"
