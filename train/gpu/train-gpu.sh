#!/usr/bin/env bash
# Every method (ProCo, LA, CE, LDAM-DRW) side by side on one GPU machine, 200 epochs.
# (The bundled model was trained by an earlier revision of this script and of train/: see git history.)
#
# The machine had PyTorch with CUDA but no network, so the CIFAR-10 archive and any missing wheels
# (Pillow, torchvision, for its Python version) travel with the repository in STAGE:
#   STAGE/cifar10-jpeg.tar.xz   STAGE/wheels/*.whl
# Usage (from the repository root):  OUT=runs/gpu [MAX_SECONDS=570] bash train/gpu/train-gpu.sh
# A timed warm-up prints the estimate first. Without MAX_SECONDS the runs go to the end. With it, a run that
# would pass the limit is refused unless ALLOW_PAUSE=1: then every run checkpoints before the limit and exits 3,
# and running the same command again resumes them (the schedule is never shortened).
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
extra=()
[ -n "${MAX_SECONDS:-}" ] && extra+=(--max-seconds "$MAX_SECONDS")
[ "${ALLOW_PAUSE:-0}" = 1 ] && extra+=(--allow-pause)
$PY -m train all --data "$STAGE/cifar10-jpeg.tar.xz" --cache /tmp/cifar10_u8.npz --out "$OUT" --epochs 200 \
  --device cuda --resume "${extra[@]}" 2>&1 \
  | tee -a "$OUT/console.log" | awk '!/event=epoch / || /epoch=(1|2|[0-9]*[02468]0) /' | tail -c 20000
ls -la "$OUT"
