"""`dvc repro` of the whole pipeline in a temporary git repo, on synthetic sprites and a tiny model.

Checks what users rely on: a registered model with both aliases, loadable in a fresh process;
sampling from the registry writes the asked number of PNGs; a second `dvc repro` does
nothing; changing one param reruns only the stages that read it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from tests.flows_helpers import copy_project, project_env, run_checked, sprite_folder, tiny_params, write_params

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


@pytest.fixture
def pipeline_repo(tmp_path: Path, mlflow_empty_db: Path, prefect_harness: None) -> tuple[Path, dict[str, str]]:
    repo = copy_project(tmp_path / "repo", mlflow_empty_db)
    images = sprite_folder(tmp_path / "sprites", n=24)
    params = tiny_params(data={"source": str(images)})
    write_params(repo / "params.yaml", params)
    env = project_env(repo, tmp_path / "prefect-home")
    run_checked(["git", "init", "-q"], repo, env)
    run_checked([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    # No update check (DVC has no environment switch for it, only this config key).
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "pipeline"], repo, env)
    return repo, env


def test_dvc_repro_end_to_end(pipeline_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = pipeline_repo
    dvc = [sys.executable, "-m", "dvc"]
    out = run_checked([*dvc, "repro"], repo, env, timeout=600)
    for stage in ("fetch", "prepare", "pokedex", "train", "evaluate", "sample"):
        assert f"Running stage '{stage}'" in out

    # The registry: version 1 is both candidate and (first model, so) champion.
    probe = (
        "import json, mlflow; c = mlflow.MlflowClient(); m = c.get_registered_model('pokemon-stylegan');"
        "print(json.dumps({a: int(v) for a, v in m.aliases.items()}))"
    )
    aliases = json.loads(run_checked([sys.executable, "-c", probe], repo, env).strip().splitlines()[-1])
    assert aliases == {"candidate": 1, "champion": 1}, out[-8000:]
    promotion = json.loads((repo / "metrics" / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["champion_version"] == "1"
    assert json.loads((repo / "metrics" / "eval.json").read_text())  # metrics were computed
    samples = sorted((repo / "samples").glob("seed*.png"))
    assert len(samples) == 6 and (repo / "samples" / "grid.png").is_file()

    # A fresh process loads the champion through plain MLflow, and through the CLI.
    load = (
        "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/pokemon-stylegan@champion');"
        "a = m.predict(pd.DataFrame({'seed': [1, 2, 3]}), params={'output': 'array'});"
        "df = m.predict(pd.DataFrame({'seed': [4], 'truncation_psi': [0.5], 'noise_mode': ['const']}));"
        "print(a.shape, a.dtype, list(df.columns))"
    )
    # The pokedex stage's network is logged beside the generator: each served image is named.
    served = run_checked([sys.executable, "-c", load], repo, env)
    assert "(3, 16, 16, 3) uint8 ['seed', 'image_png_base64', 'name', 'looks_like']" in served
    cli_out = repo.parent / "cli-samples"
    run_checked([sys.executable, "-m", "stylegan.cli", "sample", "--model", "models:/pokemon-stylegan@champion",
          "--seeds", "0-3", "--psi", "0.7", "--out", str(cli_out)], repo, env)
    assert len(list(cli_out.glob("*.png"))) == 4
    missing = subprocess.run(
        [sys.executable, "-m", "stylegan.cli", "sample", "--model", "models:/pokemon-stylegan@nope", "--out",
         str(cli_out)], cwd=repo, env=env, capture_output=True, text=True, check=False,
    )
    assert missing.returncode != 0 and "has no alias 'nope'; aliases: candidate -> v1, champion -> v1" in missing.stderr

    # Nothing changed: nothing runs.
    again = run_checked([*dvc, "repro"], repo, env)
    assert "Running stage" not in again
    assert "up to date" in run_checked([*dvc, "status"], repo, env)

    # A sampling param changes: only the sample stage is stale, and only it reruns.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["truncation_psi"] = 0.5
    write_params(repo / "params.yaml", params)
    status = run_checked([*dvc, "status", "--json"], repo, env)
    assert set(json.loads(status.strip().splitlines()[-1])) == {"sample"}
    rerun = run_checked([*dvc, "repro"], repo, env)
    assert "Running stage 'sample'" in rerun
    for stage in ("fetch", "prepare", "pokedex", "train", "evaluate"):
        assert f"Running stage '{stage}'" not in rerun
    assert json.loads((repo / "samples" / "sample.json").read_text())["truncation_psi"] == 0.5

    # The declared metrics and plots read back through DVC (offline: --json, no CDN).
    shown = json.loads(run_checked([*dvc, "metrics", "show", "--json"], repo, env).strip().splitlines()[-1])
    files = next(iter(shown.values()))["data"]
    assert "swd" in files["metrics/eval.json"]["data"] and "kimg" in files["metrics/train.json"]["data"]
    assert files["metrics/pokedex.json"]["data"]["species"] == 24  # one animation each: none held out
    plots = json.loads(run_checked([*dvc, "plots", "show", "--json"], repo, env))
    assert {"losses", "throughput", "schedule"} <= {name.split("::")[-1] for name in plots.get("data", plots)}

    # An experiment with one training param changed: train, evaluate (and sample) rerun, the data
    # stages do not, and the new generator is registered as the next candidate.
    exp = run_checked([*dvc, "exp", "run", "-S", "train.seed=1"], repo, env, timeout=600)
    assert "Running stage 'train'" in exp and "Running stage 'evaluate'" in exp
    for stage in ("fetch", "prepare", "pokedex"):
        assert f"Running stage '{stage}'" not in exp
    aliases = json.loads(run_checked([sys.executable, "-c", probe], repo, env).strip().splitlines()[-1])
    promotion = json.loads((repo / "metrics" / "promotion.json").read_text())
    assert promotion["version"] == "2" and aliases["candidate"] == 2
    assert aliases["champion"] == int(promotion["champion_version"])  # the recorded decision is the registry's
    assert len(list((repo / "runs" / "train").iterdir())) == 2  # the first run's checkpoints are kept
