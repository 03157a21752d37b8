#!/usr/bin/env bash
# One command for a GPU the moment one is available (at most 8 minutes on one GPU):
#   bash benchmarks/gpu_check.sh                     # throughput table + 3-minute 64x64 run + fd_effnet
#   bash benchmarks/gpu_check.sh --data DIR          # sprites from DIR (prepared arrays, images, or the tarball)
#   bash benchmarks/gpu_check.sh --peak-tflops 989   # MFU against this peak (unknown GPUs)
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh     # the same on the CPU with tiny sizes (what the test runs)
# Needs only the library's packages (torch, numpy, pillow, pandas, safetensors, pyyaml; the
# efficientnet-lite0 weights package for fd_effnet), not prefect, mlflow or dvc. Prints a table and
# writes benchmarks/results/gpu_check-<time>-<device>.json. Options: python benchmarks/gpu_check.py -h
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" benchmarks/gpu_check.py "$@"
