#!/usr/bin/env bash
# The GPU check, for the few minutes of a rented GPU box (docs/gpu.md). On a CPU machine first:
#   bash benchmarks/gpu_kit.sh                                   # writes gpu-kit/ (sprites + weights), < 60 MiB
# Then on the GPU box, one command of at most 9 minutes (results, logs and the model in $OUT):
#   bash benchmarks/gpu_check.sh --kit gpu-kit --out "$OUT"
# Optional second command, the compiled rows (inductor cache in .inductor-cache/ of the checkout):
#   bash benchmarks/gpu_check.sh --compile on --amp bf16 --no-train --out "$OUT/compiled"
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh --kit gpu-kit --out /tmp/out   # the same on the CPU, tiny sizes
# Always the box's own python3 (with its CUDA torch): a .venv sent along holds this machine's
# CPU wheel and links to an interpreter the box lacks. PYTHON=... overrides (tests use it).
# Needs only the library's packages (torch, numpy, pillow, pandas, safetensors, pyyaml), never
# prefect, mlflow or dvc; installs nothing. Options: python3 benchmarks/gpu_check.py -h
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.inductor-cache}"
exec "${PYTHON:-python3}" -u benchmarks/gpu_check.py "$@"
