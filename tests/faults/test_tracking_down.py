"""The tracking store goes down mid-run: training stops with one clear line and resumes cleanly.

Chosen behaviour (docs/operations.md, "Fault injection"): training does not go on without its tracker. The
MLflow callback turns the store's error into ``TrackingUnavailable`` (one line: which store, at
which kimg, what to do); the trainer stops, keeping its checkpoints; the same command, once the
store answers again, resumes from the newest checkpoint and logs the remaining metrics, each
step exactly once, and ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults import _faultlib as fl

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fl.tiny_project(tmp_path_factory.mktemp("faults-project"))


def test_tracking_store_down_mid_run_stops_clearly_and_resumes(
    project: dict[str, Any], tmp_path: Path, mlflow_store: str
) -> None:
    pytest.importorskip("mlflow")
    from flows.tracking import store

    client = store.setup(tmp_path)
    run_id = client.create_run(store.ensure_experiment(client, store.EXPERIMENT, tmp_path)).info.run_id
    run_dir, export = tmp_path / "run", tmp_path / "export"
    args = (str(project["params"]), str(project["data"]), str(run_dir), str(export), mlflow_store, run_id)
    t0 = time.perf_counter()
    log = tmp_path / "stderr.txt"
    code = fl.run_child(fl.tracked_train_child, *args, 4, stderr=log)  # the store locks at the 4th tick
    stopped = time.perf_counter() - t0
    err = log.read_text().strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith(f"train: error: the MLflow tracking store {mlflow_store} did not answer at kimg ")
    assert "re-run the same command" in err[-1] and "database is locked" in err[-1], err[-1]
    logged = [m.step for m in client.get_metric_history(run_id, "kimg")]
    assert logged == [8, 16, 24], logged  # the three ticks before the store went down
    assert fl.run_child(fl.tracked_train_child, *args, 0) == 0  # store back: the same command
    steps = [m.step for m in client.get_metric_history(run_id, "kimg")]
    assert steps == list(range(8, 97, 8)), steps  # every tick once, none lost, none twice
    same = (export / "generator.safetensors").read_bytes() == (
        project[0]["export"] / "generator.safetensors").read_bytes()
    print(f"\nFIGURE tracking-down: SQLite store locked at tick 4 of 12 -> training stopped after {stopped:.1f} s with "
          f"one line ('{err[-1][:70]}...'); the re-run resumed, {len(steps)} ticks logged once each, "
          f"export identical to an uninterrupted run: {same}")
    assert same
