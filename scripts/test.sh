#!/usr/bin/env bash
# The test command: sets up .venv, lints, runs the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
