#!/usr/bin/env bash
# The release training: params.yaml + params-release.yaml on the default sprites, in the
# background-friendly way (nice, checkpointed every snapshot_kimg; rerun to resume). Then
# `pokegan release --export runs/release/export --name NAME --run-dir runs/release` packages
# pretrained/NAME/ (`pokegan release --help`).
# Extra arguments go to `pokegan train` (e.g. `--threads 1` on a busy machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -a; . flows/telemetry.env; set +a
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q
dvc repro prepare                     # the sprites at 32x32 (a no-op when data/prepared is current)
mkdir -p runs/release
exec nice -n "${RELEASE_NICE:-5}" pokegan train --params params.yaml --profile params-release.yaml \
  --run-dir runs/release --events runs/release/events.jsonl --export runs/release/export "$@"
