"""`python -m flows.pipeline` skips finished work as `dvc repro` does, and DVC decides what is stale.

One tiny DVC project runs the pipeline four times: everything runs; nothing changed, so every
step is "Cached" and no output file is rewritten; one sample param overridden, so only sample
runs; its output deleted, so the cached sample runs again. Another edits one param in
params.yaml: the stages `dvc status` reports changed are exactly those the pipeline reruns.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("mlflow")

import yaml

from tests.flows_helpers import REPO, sprite_folder, tiny_params, write_params

pytestmark = [pytest.mark.pipeline]


def _dvc_init(root: Path) -> None:
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True).close()  # no git needed: DVC alone says what is stale
    (root / ".dvc" / "config").write_text("[core]\n    no_scm = True\n    analytics = false\n"
                                          "    check_update = false\n")


def _dvc_status(root: Path) -> set[str]:
    """The stages `dvc status` (the CLI, a process of its own) reports changed."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True,
                          text=True, check=True, timeout=120)
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _project(tmp_path: Path, mlflow_empty_db: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    for code in ("stylegan", "flows"):  # the stages' code deps, hashed by DVC
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    _dvc_init(root)
    images = sprite_folder(tmp_path / "sprites", n=16)
    write_params(root / "params.yaml", tiny_params(data={"source": str(images)},
                                                   train={"fade_kimg": 0.032, "stab_kimg": 0.032}))
    (root / "mlruns").mkdir()
    shutil.copyfile(mlflow_empty_db, root / "mlruns" / "mlflow.db")
    return root


@pytest.mark.slow
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
    assert _dvc_status(root) == {"sample"}  # dvc.lock holds the seeds it ran with, not params.yaml's

    # Inputs unchanged but the output is gone: the cached step runs again.
    shutil.rmtree(root / "samples")
    fourth = pipeline_flow(root=str(root), overrides=["sample.seeds=0-3"])
    assert fourth["steps"]["sample"] == "ran" and (root / "samples" / "grid.png").exists()
    assert fourth["steps"]["evaluate"] == "cached"


@pytest.mark.slow
def test_pipeline_reruns_what_dvc_status_reports(tmp_path: Path, mlflow_empty_db: Path, prefect_harness: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import STEPS, pipeline_flow

    root = _project(tmp_path, mlflow_empty_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    assert _dvc_status(root) == set(STEPS)  # nothing in dvc.lock yet
    assert pipeline_flow(root=str(root))["steps"] == dict.fromkeys(STEPS, "ran")
    assert _dvc_status(root) == set()  # the pipeline recorded its steps in dvc.lock, as `dvc repro` does

    again = pipeline_flow(root=str(root))  # params untouched: nothing stale, nothing runs
    assert again["stale"] == {} and set(again["steps"].values()) == {"cached"}

    def ran_after_editing(section: str, key: str, value: object) -> tuple[set[str], set[str], dict[str, str]]:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params[section][key] = value
        write_params(root / "params.yaml", params)
        stale = _dvc_status(root)
        out = pipeline_flow(root=str(root))
        assert set(out["stale"]) == stale  # the pipeline's own `dvc status` is the CLI's
        assert _dvc_status(root) == set()  # and what it ran is committed
        return stale, {s for s, v in out["steps"].items() if v == "ran"}, out["steps"]

    stale, ran, steps = ran_after_editing("sample", "truncation_psi", 0.5)  # a sample-only key
    assert stale == ran == {"sample"}, steps
    assert json.loads((root / "samples" / "sample.json").read_text())["truncation_psi"] == 0.5

    # An evaluate-only key: evaluate reruns; sample after it only if DVC then finds its dep
    # (metrics/promotion.json) changed, as `dvc repro` would.
    promotion = (root / "metrics" / "promotion.json").read_bytes()
    stale, ran, steps = ran_after_editing("evaluate", "novelty_samples", 8)
    changed = (root / "metrics" / "promotion.json").read_bytes() != promotion
    assert stale == {"evaluate"} and ran == {"evaluate", *(["sample"] if changed else [])}, steps


def test_dvc_stages_is_dvc_status(tmp_path: Path) -> None:
    """DvcStages on a two-stage toy project (no training): its status is the CLI's, a commit is
    what `dvc status` then finds done, the key holds across the commit, and overrides are params."""
    from flows.pipeline import DvcStages

    root = tmp_path
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "true", "deps": ["code.py"], "params": ["a.x"], "outs": ["a.txt"]},
        "b": {"cmd": "true", "deps": ["a.txt"], "params": ["b"], "outs": ["b.txt", {"m.json": {"cache": False}}]},
    }}))
    (root / "params.yaml").write_text("# a comment\na:\n  x: 1\n  lr: 1e-3\nb:\n  y: 0-5\n")
    (root / "code.py").write_text("x = 1\n")
    _dvc_init(root)

    def run(name: str, dvc: DvcStages) -> None:  # a step: its outputs, then the commit
        key = dvc.key(name)
        (root / f"{name}.txt").write_text(name)
        if name == "b":
            (root / "m.json").write_text("{}")
        dvc.commit(name)
        assert dvc.key(name) == key  # what the next run looks its result up by

    dvc = DvcStages(root)
    try:
        assert set(dvc.status(["a", "b"])) == {"a", "b"}  # nothing in dvc.lock yet
        run("a", dvc)
        run("b", dvc)
        assert dvc.status(["a", "b"]) == {} and _dvc_status(root) == set()
        (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("0-5", "0-3"))
        assert dvc.status(["a", "b"]) == {"b": [{"changed deps": {"params.yaml": {"b": "modified"}}}]}
        assert _dvc_status(root) == {"b"}
    finally:
        dvc.close()

    back = DvcStages(root, overrides=["b.y=0-5"])  # back to the committed value
    try:
        assert back.status(["a", "b"]) == {}
    finally:
        back.close()
    overridden = DvcStages(root, overrides=["b.y=0-7", "a.lr=0.1"])  # a.lr is no stage's param
    try:
        assert overridden.status(["a", "b"]) == {"b": [{"changed deps": {"params.yaml": {"b": "modified"}}}]}
        run("b", overridden)
        assert overridden.status(["a", "b"]) == {}
        assert "0-7" in (root / "dvc.lock").read_text()  # the value it ran with
    finally:
        overridden.close()
    assert _dvc_status(root) == {"b"}  # params.yaml says 0-3
    assert "# a comment" in (root / "params.yaml").read_text()  # the user's params file is untouched
