#!/usr/bin/env bash
# The main job: set up .venv, `dvc repro` the whole pipeline (fetch -> prepare -> train ->
# evaluate -> sample) on the default sprites, then say where the champion and the grid are.
# Extra arguments go to `dvc repro` (e.g. `bash scripts/main.sh sample` or `-f`).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
set -a; . flows/telemetry.env; set +a   # telemetry off (the one list)
# Prefect keeps its temporary server's database in the project unless you have your own.
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q   # DVC stages need a git repo
dvc repro "$@"

uri="$(python - <<'PY'
from flows.tracking.store import default_tracking_uri
from stylegan.config import load_params, section
reg = section(load_params("params.yaml"), "registry")
print(f"models:/{reg.name}@{reg.champion_alias}|{default_tracking_uri('.')}")
PY
)"
out_dir="$(python -c 'from stylegan.config import load_params, section; print(section(load_params("params.yaml"), "sample").out_dir)')"
echo
dvc metrics show || true
echo
model="${uri%%|*}" store="${uri#*|}" bin="$PWD/.venv/bin"
echo "Done in $(( $(date +%s) - start )) s."
echo "Champion model:  $model   (MLflow store: $store)"
echo "Sample grid:     $PWD/$out_dir/grid.png"
echo "Decision:        $(python -c 'import json; print(json.load(open("metrics/promotion.json"))["reason"])' 2>/dev/null || echo see metrics/promotion.json)"
echo
echo "Next, paste any of these (absolute paths: they work from any folder):"
echo "  source $bin/activate    # pokegan, mlflow, dvc, prefect on PATH for the README's commands"
echo "  MLFLOW_DISABLE_TELEMETRY=true $bin/mlflow ui --backend-store-uri $store"
echo "  MLFLOW_TRACKING_URI=$store $bin/pokegan studio --model $model"
echo "  PATH=$bin:\$PATH MLFLOW_TRACKING_URI=$store MLFLOW_DISABLE_TELEMETRY=true mlflow models serve -m $model --env-manager local -p 5001"
