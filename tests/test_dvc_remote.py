"""DVC as a team uses it: a local-folder remote, image plots across revisions.

In one clone: `dvc repro` (tiny synthetic data and model), commit, `dvc push` to a folder
remote. In a fresh `git clone`: `dvc pull` restores data/prepared, the exported generator and
the registration record, and `dvc status` / `dvc repro` have nothing to do. Back in the first
clone, a changed sample param re-samples, and `dvc plots diff` lists the sample grid and the
truncation sweep as images of both revisions.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from tests.flows_helpers import REPO, copy_project, project_env, run_checked, sprite_folder, tiny_params, write_params

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def test_push_pull_fresh_clone_is_up_to_date_and_image_plots_diff(
    tmp_path: Path, mlflow_empty_db: Path, prefect_harness: None
) -> None:
    repo = copy_project(tmp_path / "a", mlflow_empty_db)
    images = sprite_folder(tmp_path / "sprites", n=16)
    write_params(repo / "params.yaml", tiny_params(data={"source": str(images)},
                                                   train={"fade_kimg": 0.032, "stab_kimg": 0.032}))
    env = project_env(repo, tmp_path / "prefect-home")
    dvc = [sys.executable, "-m", "dvc"]
    remote = tmp_path / "remote"
    run_checked(["git", "init", "-q"], repo, env)
    run_checked([*dvc, "init", "-q"], repo, env)
    shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the project's: no analytics, no update check
    run_checked([*dvc, "remote", "add", "-d", "shared", str(remote)], repo, env)
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "project"], repo, env)

    run_checked([*dvc, "repro"], repo, env, timeout=900)
    run_checked(["git", "add", "-A"], repo, env)  # dvc.lock, metrics/, the .gitignore files DVC wrote
    run_checked(["git", "commit", "-qm", "trained"], repo, env)
    run_checked([*dvc, "push"], repo, env)
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    # A teammate: a fresh clone, `dvc pull`, and the pipeline is up to date.
    clone = tmp_path / "b"
    run_checked(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data" / "prepared").exists()
    run_checked([*dvc, "pull"], clone, env)
    for path in ("data/prepared/manifest.csv", "models/generator/generator.safetensors", "models/registered.json",
                 "samples/grid.png", "reports/truncation_sweep.png"):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    status = json.loads(run_checked([*dvc, "status", "--json"], clone, env))
    assert status == {}, status
    out = run_checked([*dvc, "repro"], clone, env)
    assert "up to date" in out and "Running stage" not in out, out

    from stylegan.checkpoint import load_generator

    assert load_generator(clone / "models" / "generator").img_resolution == 16

    # Image plots across revisions: a changed sample param reruns only sample; diff shows both grids.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["truncation_psi"] = 0.3
    write_params(repo / "params.yaml", params)
    out = run_checked([*dvc, "repro"], repo, env)
    assert "Running stage 'sample'" in out and "Running stage 'train'" not in out
    diff = json.loads(run_checked([*dvc, "plots", "diff", "HEAD", "--json"], repo, env))["data"]
    for image in ("samples/grid.png", "reports/truncation_sweep.png"):
        entries = diff[image]
        assert {e["type"] for e in entries} == {"image"}, entries
        assert {e["revisions"][0] for e in entries} == {"HEAD", "workspace"}, entries
    grids = {e["revisions"][0]: e["url"] for e in diff["samples/grid.png"]}
    assert Path(grids["HEAD"]).read_bytes() != Path(grids["workspace"]).read_bytes()  # psi 0.7 vs 0.3
