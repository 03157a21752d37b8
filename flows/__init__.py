"""Orchestration: Prefect flows, MLflow tracking and registry. The only package that imports them.

Telemetry is switched off before prefect, mlflow or dvc is imported anywhere in the pipeline
(the machines this runs on often have no network, and users did not ask to be counted).
"""

import os

for _var, _value in (
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DVC_NO_ANALYTICS", "1"),
    ("DO_NOT_TRACK", "1"),  # the cross-tool switch (DVC's update check is off in .dvc/config: core.check_update)
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # one progress bar per download clutters stage logs
    # Prefect's temporary server gets 20 s to start by default; a fresh PREFECT_HOME on a busy
    # 2-core machine can need more (seen failing at 20 s), and a timeout would fail the stage.
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
):
    os.environ.setdefault(_var, _value)
