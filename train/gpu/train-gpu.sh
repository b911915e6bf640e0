#!/usr/bin/env bash
# What ran on the GPU machine to train the bundled model (ProCo, LA and CE side by side on one GPU).
#
# The machine had PyTorch with CUDA but no network, so the CIFAR-10 archive and any missing wheels
# (Pillow, torchvision, for its Python version) travel with the repository in STAGE:
#   STAGE/cifar10-jpeg.tar.xz   STAGE/wheels/*.whl
# Usage (from the repository root):  OUT=runs/gpu BUDGET=415 bash train/gpu/train-gpu.sh
# BUDGET is the wall-clock budget in seconds: each run times epochs 2-3 and, if 200 epochs cannot
# finish in time, shrinks its schedule once and logs that (see train/fit.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-.gpu-stage}
OUT=${OUT:?set OUT to the folder for checkpoints and logs}
PY=${PY:-python3}
mkdir -p "$OUT"
$PY -V; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
tag=$($PY -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
$PY -c 'import PIL' 2>/dev/null || $PY -m pip install -q --no-deps --no-index "$STAGE"/wheels/pillow-*-"$tag"-*.whl
$PY -c 'import torchvision' 2>/dev/null || $PY -m pip install -q --no-deps --no-index "$STAGE"/wheels/torchvision-*-"$tag"-*.whl
$PY -c 'import torch, torchvision, PIL, numpy; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
# Every 20th epoch line is shown; the full logs are OUT/*.log.jsonl and OUT/console.log.
$PY -m train gpu-all --data "$STAGE/cifar10-jpeg.tar.xz" --out "$OUT" --epochs 200 --time-budget "${BUDGET:-470}" 2>&1 \
  | tee "$OUT/console.log" | awk '!/event=epoch / || /epoch=(1|2|[0-9]*[02468]0) /' | tail -c 20000
ls -la "$OUT"
