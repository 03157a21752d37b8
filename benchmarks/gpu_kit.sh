#!/usr/bin/env bash
# Write the GPU kit (gpu-kit/, git-ignored) on a CPU machine, before a GPU session:
#   bash benchmarks/gpu_kit.sh             # 64x64 sprites (prepared first if needed) + EfficientNet-Lite0 weights
#   bash benchmarks/gpu_kit.sh --max-images 5000 --seed 1    # a smaller seeded subset
# It prints the kit's size and fails if checkout + kit would exceed 60 MiB. Then, on the GPU box,
# the one command of docs/gpu.md: bash benchmarks/gpu_check.sh --kit gpu-kit --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
data=data/gpu-check/sprites-64
for arg in "$@"; do [[ "$arg" == --data* ]] && data=""; done
if [[ -n "$data" && ! -f "$data/images_64.npy" ]]; then
  "$py" benchmarks/gpu_check.py --prepare-only
fi
exec "$py" benchmarks/gpu_kit.py "$@"
