"""The team setup for real: PostgreSQL, MLflow and Prefect servers on it, a work pool, a process worker.

`scripts/team-services.sh start` brings up PostgreSQL (Debian's, whichever version is installed),
an MLflow tracking server and a Prefect server on it (127.0.0.1, free ports) and deploys the flows
to a process work pool; `scripts/team-services.sh worker` (what the GPU box runs) picks up the pipeline run
triggered with `prefect deployment run`. The checks read the servers (and PostgreSQL itself):
the run with its metrics, dataset, system metrics and snapshot images, the registered model
with both aliases and its linked evaluation metrics, the model pulled back over HTTP; a second
trigger finds every step cached. The MLflow UI is then checked in headless Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from flows import telemetry_env
from tests.flows_helpers import REPO, sprite_folder, tiny_params, write_params
from tests.helpers import free_port, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def _postgres_bin(debian: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """The folder of PostgreSQL's server programs: $PG_BIN if set, else the newest Debian
    /usr/lib/postgresql/<version>/bin that has initdb, else `pg_config --bindir` if that has it."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = [p.parent for p in debian.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    if versions:
        return max(versions, key=lambda b: int(b.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    return None


PG_BIN = _postgres_bin()
CHROMIUM = Path("/usr/bin/chromium")
STEPS = ("fetch", "prepare", "pokedex", "train", "evaluate", "sample")


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-5000:]}"
    return out


def _trigger(env: dict[str, str], project: Path, worker_log: Path) -> str:
    """Run the pipeline deployment through the worker; returns the flow run id once Completed."""
    proc = subprocess.run(["prefect", "deployment", "run", "pokegan-pipeline/pipeline", "--watch",
                           "--watch-timeout", "600"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=660, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Completed" in out, (
        f"the pipeline run did not complete:\n{out[-3000:]}\nworker log:\n{worker_log.read_text()[-6000:]}")
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)


def _task_states(api: str, flow_run_id: str) -> dict[str, str]:
    import json
    import urllib.request

    body = json.dumps({"flow_runs": {"id": {"any_": [flow_run_id]}}}).encode()
    request = urllib.request.Request(f"{api}/task_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)
    # The step tasks (the subflows' own parent-task runs are named pokegan-<flow>-<uuid>).
    return {r["name"]: r["state"]["name"] for r in runs if r["name"] in STEPS}


@pytest.fixture(scope="module")
def team() -> Iterator[dict[str, Any]]:
    """The servers, a worker, and two pipeline runs on a tiny synthetic project; torn down after."""
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server found (no initdb in {PG_BIN or '/usr/lib/postgresql/*/bin'}): "
                    "bash scripts/system-deps.sh, or apt-get install postgresql, or set PG_BIN")
    pytest.importorskip("psycopg", reason="the team extra is not installed (pip install -e '.[team]')")
    # PostgreSQL runs as `postgres` when we are root: everything it reads must be reachable by it.
    base = Path(tempfile.mkdtemp(prefix="pokegan-team-", dir="/tmp"))
    base.chmod(0o755)
    project = base / "project"
    project.mkdir()
    for name in ("stylegan", "flows", "scripts"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    # A clone has the repo's .dvc/: the pipeline asks DVC what is stale (no git in this copy).
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True)
    images = sprite_folder(base / "sprites", n=16)
    write_params(project / "params.yaml", tiny_params(data={"source": str(images)},
                                                      train={"fade_kimg": 0.032, "stab_kimg": 0.032}))
    ports = {"PG_PORT": free_port(), "MLFLOW_PORT": free_port(), "PREFECT_PORT": free_port()}
    mlflow_url = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    api = f"http://127.0.0.1:{ports['PREFECT_PORT']}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
        **{k: str(v) for k, v in ports.items()},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(project), "TEAM_DIR": str(base / "team"), "POOL": "pokegan-test", "PG_BIN": str(PG_BIN),
        "PREFECT_HOME": str(base / "client-home"), **telemetry_env(),
    }
    script = ["bash", str(project / "scripts" / "team-services.sh")]
    worker = None
    try:
        start_out = _run([*script, "start"], env, project, timeout=600)
        env.update(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=mlflow_url,
                   MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="2")
        worker_log = base / "worker.log"
        with worker_log.open("w") as log:
            worker = subprocess.Popen([*script, "worker"], cwd=project, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        first = _trigger(env, project, worker_log)
        second = _trigger(env, project, worker_log)
        yield {"base": base, "project": project, "env": env, "mlflow_url": mlflow_url, "api": api,
               "runs": (first, second), "start_out": start_out, "pg_port": ports["PG_PORT"]}
    finally:
        if worker is not None and worker.poll() is None:
            stop_group(worker, grace=30)
        subprocess.run([*script, "stop"], cwd=project, env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _pg(team: dict[str, Any], db: str, sql: str) -> int:
    import psycopg

    password = (team["base"] / "team" / "pg-password").read_text().strip()
    with psycopg.connect(host="127.0.0.1", port=team["pg_port"], user="pokegan", password=password, dbname=db) as c:
        return int(c.execute(sql).fetchone()[0])


def test_pipeline_runs_on_the_team_servers(team: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from flows.tracking import datasets, logged_model

    assert "export MLFLOW_TRACKING_URI=" in team["start_out"] and "prefect worker start --pool" in team["start_out"]
    first, second = team["runs"]
    assert _task_states(team["api"], first) == dict.fromkeys(STEPS, "Completed")
    # The rerun skips every step: results persisted in the project by the worker's first run.
    assert _task_states(team["api"], second) == dict.fromkeys(STEPS, "Cached")

    client = MlflowClient(tracking_uri=team["mlflow_url"], registry_uri=team["mlflow_url"])
    exp = client.get_experiment_by_name("pokegan")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server to its folder
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_G")][-1] == 96
    assert "eval.fd_effnet" in run.data.metrics, sorted(run.data.metrics)
    assert "system/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
    digest = datasets.dvc_tree_hash(team["project"] / "data" / "prepared")
    inputs = {(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert inputs == {("sprites", digest, "training"), ("sprites (evaluation)", digest, "evaluation")}

    model = client.get_registered_model("pokemon-stylegan")
    assert model.aliases == {"candidate": "1", "champion": "1"}
    model_id = logged_model.model_id_of(client, "pokemon-stylegan", "1")
    linked = {(m.key, m.dataset_name) for m in client.get_logged_model(model_id).metrics}
    assert ("eval.fd_effnet", "sprites (evaluation)") in linked
    assert ("loss_G", None) in linked  # the last tick's losses, at the step the model was logged
    assert not any(k.startswith("system/") for k, _ in linked)  # not the machine's load
    assert any((team["base"] / "team" / "mlflow-artifacts").rglob("generator.safetensors"))

    # Anyone with MLFLOW_TRACKING_URI pulls the champion over HTTP.
    from flows.sample import load_registered_generator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team["mlflow_url"])
    G = load_registered_generator("models:/pokemon-stylegan@champion")
    assert G.img_resolution == 16 and G.registry_version == "1"

    # It all lives in PostgreSQL.
    # The training run and the pokedex stage's run; pokemon-stylegan v1 and pokemon-pokedex v1.
    assert _pg(team, "mlflow", "SELECT count(*) FROM runs") == 2
    assert _pg(team, "mlflow", "SELECT count(*) FROM model_versions") == 2
    assert client.get_registered_model("pokemon-pokedex").aliases == {"current": "1"}
    assert _pg(team, "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'") >= 2


def test_mlflow_ui_shows_dataset_model_metrics_system_metrics_and_image_steps(
    team: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the MLflow UI check")
    playwright = pytest.importorskip("playwright.sync_api")
    from mlflow import MlflowClient

    from flows.tracking import logged_model

    client = MlflowClient(tracking_uri=team["mlflow_url"], registry_uri=team["mlflow_url"])
    exp = client.get_experiment_by_name("pokegan")
    (run,) = client.search_runs([exp.experiment_id])
    run_id, model_id = run.info.run_id, logged_model.model_id_of(client, "pokemon-stylegan", "1")
    shots = Path(os.environ.get("POKEGAN_UI_SCREENSHOTS") or tmp_path_factory.mktemp("mlflow-ui"))
    shots.mkdir(parents=True, exist_ok=True)
    url = f"{team['mlflow_url']}/#/experiments/{exp.experiment_id}"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(60_000)

            # Run overview: the datasets with their digest and context.
            page.goto(f"{url}/runs/{run_id}")
            page.get_by_text("sprites (evaluation)").first.wait_for()
            body = page.inner_text("body")
            assert "Datasets" in body and run.inputs.dataset_inputs[0].dataset.digest in body
            assert "Training" in body and "Evaluation" in body
            page.screenshot(path=str(shots / "run-overview.png"), full_page=True)

            # System metrics tab: CPU and memory charts.
            page.goto(f"{url}/runs/{run_id}/system-metrics")
            page.get_by_text("cpu_utilization_percentage").first.wait_for()
            assert "system_memory_usage_megabytes" in page.inner_text("body")
            page.screenshot(path=str(shots / "run-system-metrics.png"))

            # Model metrics tab: the snapshot image card with a step slider over the images shown.
            page.goto(f"{url}/runs/{run_id}/model-metrics")
            page.get_by_placeholder("Search metric charts").fill("snapshot")
            slider = page.locator("[role=slider]").first
            slider.wait_for()
            assert slider.get_attribute("aria-valuemin") == "32"
            assert slider.get_attribute("aria-valuemax") == "96"  # the last snapshot, at 0.096 kimg
            page.screenshot(path=str(shots / "run-snapshot-images.png"))

            # The logged model's page: its evaluation metrics, with the dataset they were measured on.
            page.goto(f"{url}/models/{model_id}")
            page.get_by_text("eval.fd_effnet").first.wait_for()
            assert "sprites (evaluation)" in page.inner_text("body")
            page.screenshot(path=str(shots / "logged-model-metrics.png"), full_page=True)
        finally:
            browser.close()
    assert len(list(shots.glob("*.png"))) == 4
