#!/usr/bin/env bash
# The test command: installs what the tests need (Debian's chromium, chromium-driver and
# postgresql when missing; .venv with the pinned stack), lints, runs the whole suite (CPU only).
# The quick loop while editing: .venv/bin/python -m pytest -q -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
set -a; . flows/telemetry.env; set +a   # telemetry off (the one list)
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
