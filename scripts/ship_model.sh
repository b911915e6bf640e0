#!/usr/bin/env bash
# Ships a trained ProCo run as the bundled model, recomputing everything that depends on it:
#   the ONNX encoder and prototypes (temperatures fitted on the validation split), the parity
#   fixtures, the conformal scores and decision reports, the INT8 variant and its temperatures,
#   the evaluation reports, REPORT.md, COMPARISON.md and FEWSHOT.md.
# The test set is read only by the reports, never to choose anything.
#
#   scripts/ship_model.sh RUNS ARCHIVE [FIXTURES_ARCHIVE]
#   scripts/ship_model.sh train/checkpoints/cifar10-png ../shared/data/cifar10-png.tar.xz ../shared/data/cifar10-jpeg.tar.xz
#
# RUNS holds proco.pt (python -m train fit); ARCHIVE is the CIFAR-10 copy to fit and report on;
# FIXTURES_ARCHIVE the copy the parity images come from (default ARCHIVE; the JPEG copy keeps the
# server's JPEG decoder under the parity test). Needs .venv (train/requirements.txt) and
# target/release/proco-serve (cargo build --release). Work folders: data/png-splits, data/png/test
# for the PNG copy, data/splits, data/test for the JPEG copy.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:?usage: scripts/ship_model.sh RUNS ARCHIVE [FIXTURES_ARCHIVE]}
ARCHIVE=${2:?usage: scripts/ship_model.sh RUNS ARCHIVE [FIXTURES_ARCHIVE]}
FIXTURES_ARCHIVE=${3:-$ARCHIVE}
MODEL=models/cifar10-lt
PY=.venv/bin/python
B=target/release/proco-serve
case "$(basename "$ARCHIVE")" in
  *png*) SPLITS=data/png-splits; TESTROOT=data/png ;;
  *) SPLITS=data/splits; TESTROOT=data ;;
esac
VAL=$SPLITS/val
TEST=$TESTROOT/test
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

[ -x "$B" ] || { echo "build the server first: cargo build --release" >&2; exit 1; }
[ -f "$RUNS/proco.pt" ] || { echo "$RUNS/proco.pt not found: the run has not finished" >&2; exit 1; }

step "validation split ($VAL) and test set ($TEST) from $ARCHIVE"
[ -d "$VAL" ] || $PY -m train folders --data "$ARCHIVE" --out "$SPLITS"
[ -d "$TEST" ] || { mkdir -p "$TESTROOT" && tar xJf "$ARCHIVE" -C "$TESTROOT" test; }

step "export: encoder, prototypes (temperatures fitted on validation), parity fixtures from $FIXTURES_ARCHIVE"
rm -f tests/fixtures/parity/*.jpg tests/fixtures/parity/*.png
$PY -m train export --runs "$RUNS" --methods proco --data "$ARCHIVE" --model-dir "$MODEL" --fixtures tests/fixtures/parity \
  --fixtures-data "$FIXTURES_ARCHIVE"

step "conformal scores on validation; decisions on the test set"
$B eval --data "$TEST" --fit-conformal "$VAL" --write-prototypes "$MODEL/prototypes.json" --prior uniform \
  --report "$MODEL/decisions/test.json" --risk-coverage "$MODEL/decisions/risk-coverage.png" \
  --export-scores /tmp/proco-scores.json > "$MODEL/decisions/test.txt"
gzip -9 -c /tmp/proco-scores.json > "$MODEL/decisions/scores.json.gz"
$B eval --data "$TEST" --shift train --prior uniform --report "$MODEL/decisions/shift-train.json" \
  > "$MODEL/decisions/shift-train.txt"
python3 scripts/decisions_report.py

step "the parity manifest names the version the server now serves"
python3 - "$MODEL/prototypes.json" tests/fixtures/parity/manifest.json <<'EOF'
import json, sys
served = json.load(open(sys.argv[1]))
manifest = json.load(open(sys.argv[2]))
assert manifest["temperatures"] == served["temperatures"], "the conformal step must not change temperatures"
manifest["prototypes_version"] = served["version"]
with open(sys.argv[2], "w") as fh:
    json.dump(manifest, fh, indent=1)
    fh.write("\n")
EOF

step "INT8 variant: quantised on validation, its own temperatures"
# --compare also writes the shipped graph (the default setting); its log ends with that line.
$PY -m train.quantize --val "$VAL" --compare > "$MODEL/logs/quantize-compare.log"
# export wrote a manifest with the fp32 encoder only: declare the variant, fit its temperatures,
# then add them to its table (the last one in the file).
VERSION=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['version'])" "$MODEL/prototypes.json")
cat >> "$MODEL/model.toml" <<EOF

# Other graphs of the same encoder, chosen at start by the encoder_variant setting (fp32 = "encoder").
[variants.int8]
encoder = "encoder.int8.onnx"   # train/quantize.py: static QDQ INT8 (per-channel int8 weights, uint8 activations), calibrated on the validation split
# Fitted on the validation split with the int8 features (proco-serve eval --encoder-variant int8
# --fit-temperatures VAL --prototypes-temperatures; logs/int8-fit-temperatures.log) for prototypes
# version $VERSION: they replace prototypes.json's temperatures while int8 is served.
# Refit them whenever the prototypes file's temperatures are refitted (scripts/ship_model.sh).
EOF
$B eval --encoder-variant int8 --fit-temperatures "$VAL" --prototypes-temperatures \
  2> "$MODEL/logs/int8-fit-temperatures.log"
grep -E '^temperatures = \{.*\}$' "$MODEL/logs/int8-fit-temperatures.log" >> "$MODEL/model.toml"
$B eval --data "$TEST" --report "$MODEL/eval/fp32-test.json" > /dev/null
$B eval --data "$TEST" --encoder-variant int8 --prototypes-temperatures \
  --report "$MODEL/eval/int8-test-fp32-temperatures.json" > /dev/null
$B eval --data "$TEST" --encoder-variant int8 --report "$MODEL/eval/int8-test.json" > /dev/null
python3 scripts/int8_report.py

step "the Kubernetes base's ConfigMap copy of the manifest and prototypes"
cp "$MODEL/prototypes.json" deploy/k8s/base/model/prototypes.json
python3 - "$MODEL/model.toml" deploy/k8s/base/model/model.toml <<'EOF'
import re, sys
body = open(sys.argv[1]).read().split("\n", 1)[1]  # without the first comment line
body = re.sub(r'(?m)^encoder = "([^"/]+)"', r'encoder = "/opt/proco/models/cifar10-lt/\1"', body)
header = ("# model.toml as mounted from the proco-model ConfigMap (model_dir = /etc/proco/model).\n"
          "# The encoder is too large for a ConfigMap (1 MiB limit), so it stays in the image and is named\n"
          "# by absolute path; the prototypes come from this ConfigMap and hot-reload when it changes.\n")
open(sys.argv[2], "w").write(header + body)
EOF

step "REPORT.md and COMPARISON.md"
$PY -m train report --data "$ARCHIVE"
python3 scripts/comparison_table.py

step "FEWSHOT.md (the release server over HTTP, about 6 minutes)"
$PY scripts/fewshot.py --data "$ARCHIVE"
step "done: review git diff, then cargo test"
