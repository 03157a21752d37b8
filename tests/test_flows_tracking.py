"""MLflow plumbing: store location, params, tags, the training callback, registry and champion rule."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("mlflow")

from flows.tracking import callback, logged_model, provenance, registry, store


def test_served_requirements_are_pyprojects_pins_read_from_the_installed_metadata(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PIP_REQUIREMENTS restates no pin: the core dependencies and the pipeline extra's mlflow, read
    from ``importlib.metadata`` (or pyproject.toml itself, the same list), spelled as before."""
    import tomllib
    from importlib import metadata

    before = ["torch==2.13.0", "numpy>=2.0,<3", "pillow==13.0.0", "pandas==3.1.1", "safetensors==0.8.0",
              "pyyaml==6.0.3", "mlflow==3.17.2"]  # the list this module held by hand
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    mlflow_pin = next(s for s in project["optional-dependencies"]["pipeline"] if s.startswith("mlflow"))
    assert logged_model.PIP_REQUIREMENTS == [*project["dependencies"], mlflow_pin] == before
    assert "numpy<3,>=2.0" in metadata.requires("pokegan")  # setuptools' spelling, read back as pyproject's
    assert logged_model.served_requirements(metadata.requires("pokegan")) == before
    assert logged_model.served_requirements(["a<2,>=1", 'b==1; extra == "pipeline"', 'mlflow==9; extra == "dev"',
                                             'mlflow>=3; extra == "pipeline"', 'c==2; sys_platform == "linux"']) == [
        "a>=1,<2", 'c==2; sys_platform == "linux"', "mlflow>=3"]

    def not_installed(name: str) -> list[str]:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(logged_model.metadata, "requires", not_installed)  # a checkout not pip-installed
    assert logged_model.served_requirements() == before


def test_flatten_nested_params() -> None:
    flat = provenance.flatten({"train": {"lrs": {64: 0.002}, "betas": [0.0, 0.99], "lr": 0.001, "batch_sizes": {}},
                              "model": {"mapping_width": None}})
    assert flat == {"train.lrs.64": "0.002", "train.betas": "[0.0, 0.99]", "train.lr": "0.001",
                    "train.batch_sizes": "{}", "model.mapping_width": "None"}


def test_default_store_is_sqlite_under_mlruns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert store.default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_experiment_artifacts_beside_the_db(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    exp_id = store.ensure_experiment(client, "exp", tmp_path)
    assert store.ensure_experiment(client, "exp", tmp_path) == exp_id
    location = client.get_experiment(exp_id).artifact_location
    assert location == (tmp_path / "mlruns" / "artifacts").as_uri()


def test_params_callback_and_tags(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    run = client.create_run(store.ensure_experiment(client, "exp", tmp_path))
    run_id = run.info.run_id
    provenance.log_params(client, run_id, {"train": {"lr": 0.002, "lrs": {32: 0.001}}})
    provenance.log_params(client, run_id, {"train": {"lr": 0.002, "lrs": {32: 0.001}}})  # resume: no duplicate error
    assert client.get_run(run_id).data.params == {"train.lr": "0.002", "train.lrs.32": "0.001"}

    cb = callback.MlflowTrainingCallback(client, run_id)
    for kimg, loss in ((0.5, 1.5), (1.25, 0.75)):
        cb.on_tick({"kimg": kimg, "loss_G": loss, "loss_D": 2 * loss, "r1": 0.1, "resolution": 8, "alpha": 1.0,
                    "lr": 0.002, "images_per_sec": 100.0, "batch_size": 32, "stage": 0, "sec_per_tick": 5.0})
    history = client.get_metric_history(run_id, "loss_G")
    assert [(m.step, m.value) for m in history] == [(500, 1.5), (1250, 0.75)]
    assert {m.step for m in client.get_metric_history(run_id, "resolution")} == {500, 1250}

    # A resumed training (a new process, a new callback) retrains the ticks after its checkpoint
    # at 0.5 kimg: the one already logged is not logged twice, the new one is.
    resumed = callback.MlflowTrainingCallback(client, run_id)
    for kimg, loss in ((1.25, 0.75), (2.0, 0.5)):
        resumed.on_tick({"kimg": kimg, "loss_G": loss, "resolution": 8})
    history = client.get_metric_history(run_id, "loss_G")
    assert [(m.step, m.value) for m in history] == [(500, 1.5), (1250, 0.75), (2000, 0.5)]

    from PIL import Image

    cb.on_snapshot(8, 1.25, Image.new("RGB", (16, 16), "white"), tmp_path / "x.png")
    cb.on_stage_end(SimpleNamespace(resolution=8, kimg=1.25, seconds=3.0, checkpoint=tmp_path / "stage-8.pt"))
    assert client.get_metric_history(run_id, "stage_seconds")[0].step == 1250
    # A resumed callback does not log the same snapshot step again; a new step is logged.
    again = callback.MlflowTrainingCallback(client, run_id)
    again.on_snapshot(8, 1.25, Image.new("RGB", (16, 16), "white"), tmp_path / "x.png")
    again.on_snapshot(8, 2.0, Image.new("RGB", (16, 16), "white"), tmp_path / "x.png")
    files = sorted(f.path for f in client.list_artifacts(run_id, "images") if f.path.endswith(".png"))
    assert [f.split("/")[-1].split("+timestamp")[0] for f in files] == ["snapshot+step+1250", "snapshot+step+2000"]
    assert client.get_run(run_id).data.tags.get("mlflow.loggedImages") == "True"


def test_source_tags_name_commit_and_data_hash(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=tmp_path,
                   check=True)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n    - path: data/prepared\n"
        "      hash: md5\n      md5: abc123.dir\n"
    )
    tags = provenance.source_tags(tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] == "false"
    assert tags["data.dvc_hash"] == "abc123.dir"
    (tmp_path / "f.txt").write_text("y")
    assert provenance.source_tags(tmp_path)["git.dirty"] == "true"


def _versions(client, tmp_path: Path, n: int) -> list[str]:
    run = client.create_run(store.ensure_experiment(client, "exp", tmp_path))
    return [registry.register(client, (tmp_path / f"m{i}").as_uri(), "gan", "candidate", run.info.run_id)
            for i in range(n)]


def test_champion_rule_promotes_only_improvements(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    v1, v2, v3 = _versions(client, tmp_path, 3)
    assert client.get_registered_model("gan").aliases == {"candidate": int(v3)}

    d1 = registry.apply_champion_rule(client, "gan", v1, "fd", 10.0)
    assert d1.promoted and d1.previous_version is None and "no champion yet" in d1.reason
    d2 = registry.apply_champion_rule(client, "gan", v2, "fd", 12.0)
    assert not d2.promoted and d2.previous_version == v1 and d2.previous_value == 10.0
    assert str(client.get_model_version_by_alias("gan", "champion").version) == v1
    tags = client.get_model_version("gan", v2).tags
    assert tags["promotion.decision"] == "rejected" and "does not beat" in tags["promotion.reason"]
    d3 = registry.apply_champion_rule(client, "gan", v3, "fd", 8.0)
    assert d3.promoted and "beats champion v1" in d3.reason
    assert str(client.get_model_version_by_alias("gan", "champion").version) == v3
    assert client.get_model_version("gan", v3).tags["promotion.decision"] == "promoted"


def test_champion_rule_higher_is_better(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    v1, v2 = _versions(client, tmp_path, 2)
    registry.apply_champion_rule(client, "gan", v1, "precision", 0.5, higher_is_better=True)
    assert not registry.apply_champion_rule(client, "gan", v2, "precision", 0.4, higher_is_better=True).promoted
    assert registry.apply_champion_rule(client, "gan", v2, "precision", 0.6, higher_is_better=True).promoted
    assert str(client.get_model_version_by_alias("gan", "champion").version) == v2


def test_champion_rule_compares_only_like_with_like(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    v1, v2, v3, v4 = _versions(client, tmp_path, 4)
    p32 = {"resolution": 32, "num_samples": 500, "num_real": 2000, "truncation_psi": 1.0, "data": "abc"}
    assert registry.apply_champion_rule(client, "gan", v1, "fd", 50.0, protocol=p32).promoted
    # A better number measured on fewer samples is not comparable: the champion stays.
    d2 = registry.apply_champion_rule(client, "gan", v2, "fd", 10.0, protocol={**p32, "num_samples": 100})
    assert not d2.promoted and "not comparable" in d2.reason and "num_samples 500 vs 100" in d2.reason
    # A lower-resolution model does not take over, however good its number.
    assert not registry.apply_champion_rule(client, "gan", v3, "fd", 1.0, protocol={**p32, "resolution": 16}).promoted
    assert str(client.get_model_version_by_alias("gan", "champion").version) == v1
    # A higher-resolution model supersedes it even with a worse number, and says why.
    d4 = registry.apply_champion_rule(client, "gan", v4, "fd", 80.0, protocol={**p32, "resolution": 64})
    assert d4.promoted and "supersedes" in d4.reason and "resolution 32 vs 64" in d4.reason
    assert str(client.get_model_version_by_alias("gan", "champion").version) == v4
    assert json.loads(client.get_model_version("gan", v4).tags["eval.protocol"])["resolution"] == 64


def test_registry_errors_name_what_exists(mlflow_store: str, tmp_path: Path) -> None:
    client = store.setup(tmp_path)
    (v1,) = _versions(client, tmp_path, 1)
    assert str(registry.resolve_version(client, "models:/gan@candidate").version) == v1
    assert str(registry.resolve_version(client, "models:/gan/latest").version) == v1
    with pytest.raises(registry.RegistryError, match=r"no registered model 'nope'.*registered models: gan"):
        registry.resolve_version(client, "models:/nope@champion")
    with pytest.raises(registry.RegistryError, match=r"no alias 'champion'; aliases: candidate -> v1; versions: 1"):
        registry.resolve_version(client, "models:/gan@champion")
    with pytest.raises(registry.RegistryError, match=r"no version 7"):
        registry.resolve_version(client, "models:/gan/7")
    with pytest.raises(ValueError, match="not a registry URI"):
        registry.resolve_version(client, "runs:/abc/generator")


def test_a_run_shorter_than_the_sampling_interval_still_logs_system_metrics(
        mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's monitor publishes only after a full interval; a quick training must not end up with none.
    from mlflow import MlflowClient

    from flows.tracking import runs

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "60")
    client = MlflowClient(mlflow_store)
    run_id = client.create_run(client.create_experiment("short")).info.run_id
    with runs.system_metrics(run_id, mlflow_store):
        pass
    metrics = client.get_run(run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
