#!/usr/bin/env bash
# Create .venv and install the project with its pinned stack; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # torch==2.13.0 is pinned in pyproject.toml: that exact version is the local CPU wheel.
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install --quiet -e ".[pipeline,metrics,svg,team,studio,video,dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
