"""A training run's process: who owns the run, the system-metrics monitor over its life, and ending
the runs whose process died without a word (SIGKILL, OOM) or whose Prefect flow run crashed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow import MlflowClient

from flows.tracking.store import EXPERIMENT

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, PID_START_TAG, FLOW_RUN_TAG = "pokegan.host", "pokegan.pid", "pokegan.pid_start", "pokegan.flow_run"


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def claim_run(client: MlflowClient, run_id: str, flow_run_id: str | None = None) -> None:
    """Tag the run with this host and process (and Prefect flow run), so a dead owner can be detected."""
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: repr(_process_start(pid))}
    if flow_run_id:
        tags[FLOW_RUN_TAG] = str(flow_run_id)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def reap_dead_runs(client: MlflowClient, experiment: str = EXPERIMENT) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment`` owned by a process of this host that is gone.

    A process counts as gone when its pid no longer exists or now belongs to a younger process
    (pid reuse). Runs of other hosts are left alone: their processes cannot be checked from here.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`{HOST_TAG}` = '{host}'", max_results=1000)
    reaped = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags[PID_TAG])
        except (KeyError, ValueError):
            continue
        started = _process_start(pid)
        if started is not None and repr(started) == tags.get(PID_START_TAG):
            continue  # its owner is alive (maybe this very process)
        client.set_tag(run.info.run_id, "pokegan.ended", f"killed: process {pid} on {host} ended without closing "
                       "the run (SIGKILL, OOM or power loss); marked by the next training")
        client.set_terminated(run.info.run_id, status="KILLED")
        reaped.append(run.info.run_id)
        log.warning("MLflow run %s was left RUNNING by process %d, which is gone; marked KILLED", run.info.run_id,
                    pid)
    return reaped


def end_runs_of_flow_run(tracking_uri: str, flow_run_id: str, status: str, reason: str) -> list[str]:
    """Terminate the RUNNING MLflow runs a Prefect flow run opened (its on_crashed / on_cancellation hook)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'")
    for run in runs:
        client.set_tag(run.info.run_id, "pokegan.ended", reason)
        client.set_terminated(run.info.run_id, status=status)
    return [r.info.run_id for r in runs]


@contextmanager
def system_metrics(run_id: str, tracking_uri: str) -> Iterator[Any]:
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU via pynvml) for ``run_id``.

    Sampling interval: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's default 10);
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off. A resumed run continues its steps;
    a run shorter than one interval still logs one sample.
    """
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() in ("false", "0", "no"):
        yield None
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    started = time.monotonic()
    try:
        yield monitor
    finally:
        monitor.finish()
        if time.monotonic() - started < interval:
            # MLflow's loop logs only after a full interval: a shorter run would have no system
            # metrics at all, so it gets one sample, taken now that the loop has stopped.
            with contextlib.suppress(Exception):
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
