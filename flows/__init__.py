"""Orchestration: Prefect flows, MLflow tracking and registry. The only package that imports them.

Telemetry is switched off before prefect, mlflow or dvc is imported anywhere in the pipeline
(the variables of flows/telemetry.env, which the shell scripts source too).
"""

import os
from pathlib import Path

TELEMETRY_FILE = Path(__file__).with_name("telemetry.env")


def telemetry_env() -> dict[str, str]:
    """The telemetry switches of ``flows/telemetry.env`` (``NAME=value`` lines, ``#`` comments)."""
    lines = (ln.strip() for ln in TELEMETRY_FILE.read_text().splitlines())
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


for _var, _value in (
    *telemetry_env().items(),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # one progress bar per download clutters stage logs
    # Prefect's temporary server gets 20 s to start by default; a fresh PREFECT_HOME on a busy
    # 2-core machine can need more (seen failing at 20 s), and a timeout would fail the stage.
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
):
    os.environ.setdefault(_var, _value)
