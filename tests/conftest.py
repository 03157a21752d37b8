"""Shared fixtures: CPU only, deterministic, no network, no user-level state touched."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Telemetry off for every test, whatever the caller's environment says (flows/__init__.py only
# imports os: no orchestration package is loaded here).
from flows import telemetry_env

os.environ.update(telemetry_env())

# Tiny models run fastest single-threaded (and far faster on a shared, busy machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)  # a test that set more threads (pokegan train --threads) hands back one


# --- pipeline tests (flows/): temporary Prefect home and MLflow store, never the user's ---
_PIPELINE_TMP = Path(tempfile.mkdtemp(prefix="pokegan-pipeline-tests-"))
os.environ["PREFECT_HOME"] = str(_PIPELINE_TMP / "prefect")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_PIPELINE_TMP / 'mlruns' / 'mlflow.db'}"
(_PIPELINE_TMP / "mlruns").mkdir(exist_ok=True)


# Stores that belong to the user or to the project's own pipeline: no test may write to them.
_GUARDED = (
    Path.home() / ".prefect",
    Path.home() / ".config" / "mlflow",
    Path(__file__).resolve().parents[1] / "mlruns",
)


def _tree_state(root: Path) -> list[tuple[str, int]] | None:
    if not root.exists():
        return None
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session", autouse=True)
def _user_and_project_stores_untouched() -> Iterator[None]:
    before = {p: _tree_state(p) for p in _GUARDED}
    yield
    changed = [str(p) for p in _GUARDED if _tree_state(p) != before[p]]
    assert not changed, f"the tests wrote to user-level or project stores: {changed}"


@pytest.fixture(autouse=True)
def _mlflow_env_restored() -> Iterator[None]:
    """mlflow.set_tracking_uri/set_registry_uri write os.environ; undo that after each test.

    Otherwise a store of one test leaks into the next (and into subprocesses it starts):
    the e2e test read the registry of an earlier test through an inherited MLFLOW_REGISTRY_URI.
    """
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (and database) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def mlflow_empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database, made once (creating one takes ~10 s)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_empty_db: Path) -> str:
    """A fresh SQLite MLflow store (tracking + registry) for one test: a copy of the empty one."""
    import shutil

    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(mlflow_empty_db, tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
