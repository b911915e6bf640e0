#!/usr/bin/env bash
# A checkpoint written by the official ProCo code (one CIFAR-10-LT epoch of ResNet-32, made by
# train/official_launch.py) imported with the one command and served: the parity of
# tests/official/parity.py. Needs .venv (train/requirements.txt) and the debug binary (cargo test).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
B="$target/debug/proco-serve"
[ -x "$B" ] || { echo "tests/official/run.sh: $B not found: build it first (cargo test)" >&2; exit 1; }
F=tests/fixtures/official
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m train import-official $F/cifar10-lt-resnet32/ckpt.pth.tar --classes $F/cifar10-lt-resnet32/classes.txt \
  --counts $F/cifar10-lt-resnet32/counts.txt --val $F/val --out "$work/official-cifar10-lt" --server "$B"
.venv/bin/python tests/official/parity.py --ckpt $F/cifar10-lt-resnet32/ckpt.pth.tar --model "$work/official-cifar10-lt" \
  --images $F/images --reference $F/cifar10-lt-resnet32/reference.json --binary "$B"
.venv/bin/python scripts/preprocess_parity.py --binary "$B" --check tests/fixtures/photos/*
