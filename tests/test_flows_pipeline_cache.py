"""`python -m flows.pipeline` skips finished work as `dvc repro` does: cached steps, persisted results.

One tiny project runs the pipeline three times: everything runs; nothing changed, so every
step is "Cached" and no output file is rewritten; one sample param changed, so only sample
runs; its output deleted, so the cached sample runs again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from tests.flows_helpers import REPO, sprite_folder, tiny_params, write_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def _project(tmp_path: Path, mlflow_empty_db: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    for code in ("stylegan", "flows"):  # the stages' code deps, hashed into the cache keys
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    images = sprite_folder(tmp_path / "sprites", n=16)
    write_params(root / "params.yaml", tiny_params(data={"source": str(images)},
                                                   train={"fade_kimg": 0.032, "stab_kimg": 0.032}))
    (root / "mlruns").mkdir()
    shutil.copyfile(mlflow_empty_db, root / "mlruns" / "mlflow.db")
    return root


def test_rerun_skips_finished_steps(tmp_path: Path, mlflow_empty_db: Path, prefect_harness: None,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import RESULTS_DIR, STEPS, pipeline_flow

    root = _project(tmp_path, mlflow_empty_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    first = pipeline_flow(root=str(root))
    assert first["steps"] == dict.fromkeys(STEPS, "ran")
    assert any((root / RESULTS_DIR).iterdir())  # persisted results: the cache lives in the project
    watched = [root / "metrics" / "eval.json", root / "models" / "generator" / "generator.safetensors",
               root / "samples" / "grid.png", root / "data" / "prepared" / "manifest.csv"]
    before = {p: p.stat().st_mtime_ns for p in watched}

    second = pipeline_flow(root=str(root))
    assert second["steps"] == dict.fromkeys(STEPS, "cached")
    assert {p: p.stat().st_mtime_ns for p in watched} == before  # nothing was rewritten
    assert second["registered"]["version"] == first["registered"]["version"]

    # A sample param is a dep of the sample step only.
    third = pipeline_flow(root=str(root), overrides=["sample.seeds=0-3"])
    assert third["steps"] == {**dict.fromkeys(STEPS, "cached"), "sample": "ran"}
    assert len(list((root / "samples").glob("seed*.png"))) == 4

    # Inputs unchanged but the output is gone: the cached step runs again.
    shutil.rmtree(root / "samples")
    fourth = pipeline_flow(root=str(root), overrides=["sample.seeds=0-3"])
    assert fourth["steps"]["sample"] == "ran" and (root / "samples" / "grid.png").exists()
    assert fourth["steps"]["evaluate"] == "cached"


def test_fingerprint_follows_dvc_stage_inputs(tmp_path: Path) -> None:
    from flows.pipeline import step_fingerprint

    root = tmp_path
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "flows").mkdir()
    (root / "flows" / "sample.py").write_text("x = 1\n")
    params = tiny_params()
    key = step_fingerprint(root, "sample", params)
    assert step_fingerprint(root, "sample", tiny_params()) == key
    assert step_fingerprint(root, "sample", tiny_params(sample={"seeds": "0-1"})) != key  # a listed param
    assert step_fingerprint(root, "sample", tiny_params(train={"seed": 5})) == key  # not a sample param
    (root / "flows" / "sample.py").write_text("x = 2\n")  # a code dep
    assert step_fingerprint(root, "sample", params) != key
