"""A training killed with SIGKILL leaves its MLflow run RUNNING; the next training marks it KILLED.

Also: the flow's on_crashed / on_cancellation hooks terminate the MLflow run of their flow run,
and a run whose process is alive (this one) is never reaped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from mlflow import MlflowClient

from flows.tracking import runs, store
from tests.flows_helpers import REPO, packed_data, tiny_params, write_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def _wait_for_training_run(client: MlflowClient, pid: int, proc: subprocess.Popen, timeout: float) -> str:
    """The run id once the process has tagged its run and logged a tick (it is mid-training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the training ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        exp = client.get_experiment_by_name(store.EXPERIMENT)
        if exp is not None:
            found = client.search_runs([exp.experiment_id], f"tags.`{runs.PID_TAG}` = '{pid}'")
            if found and client.get_metric_history(found[0].info.run_id, "kimg"):
                return found[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no training run of process {pid} within {timeout} s")


def test_sigkilled_training_is_marked_killed_by_the_next(
    tmp_path: Path, mlflow_store: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.train import train_flow

    packed_data(tmp_path / "data" / "prepared")
    # Long enough that the kill lands mid-training (ticks every 32 images, 2 x 0.5 kimg to go).
    write_params(tmp_path / "params.yaml", tiny_params(train={"fade_kimg": 0.5, "stab_kimg": 0.5}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "MLFLOW_TRACKING_URI": mlflow_store}
    proc = subprocess.Popen([sys.executable, "-m", "flows.train", "--root", str(tmp_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = store.setup(tmp_path)
    try:
        run_id = _wait_for_training_run(client, proc.pid, proc, timeout=240)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could close it

    # The next training (other params, so another run) finds it and marks it KILLED.
    nxt = train_flow(params_path="params.yaml", root=str(tmp_path), overrides=["train.seed=1", "train.fade_kimg=0.032",
                                                                              "train.stab_kimg=0.032"])
    dead = client.get_run(run_id)
    assert dead.info.status == "KILLED" and dead.info.end_time is not None
    assert f"process {proc.pid}" in dead.data.tags["pokegan.ended"]
    assert nxt["run_id"] != run_id and client.get_run(nxt["run_id"]).info.status == "FINISHED"
    assert runs.reap_dead_runs(client) == []  # nothing left to reap


def test_live_runs_are_not_reaped_and_hooks_end_their_runs(mlflow_store: str, tmp_path: Path) -> None:
    from flows.train import _end_mlflow_run

    client = store.setup(tmp_path)
    exp = store.ensure_experiment(client, store.EXPERIMENT, tmp_path)
    alive = client.create_run(exp).info.run_id
    runs.claim_run(client, alive, "flow-run-1")
    other = client.create_run(exp).info.run_id
    runs.claim_run(client, other, "flow-run-2")
    assert runs.reap_dead_runs(client) == []  # this process owns both
    assert client.get_run(alive).info.status == "RUNNING"

    # A pid that now belongs to another (younger) process is a dead owner too.
    client.set_tag(alive, runs.PID_START_TAG, "1.0")
    assert runs.reap_dead_runs(client) == [alive]

    hook = _end_mlflow_run("KILLED", "the flow run was cancelled")
    state = SimpleNamespace(message="cancelled by a user", name="Cancelled")
    hook(None, SimpleNamespace(id="flow-run-2", parameters={"root": str(tmp_path)}), state)
    ended = client.get_run(other)
    assert ended.info.status == "KILLED" and "cancelled by a user" in ended.data.tags["pokegan.ended"]
