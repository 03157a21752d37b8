"""The train flow: fine-tuning from a registered model (lineage tags) and training a finished run longer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from flows.tracking import registry, store
from flows.train import train_flow
from tests.flows_helpers import packed_data, tiny_params, write_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def test_finetune_from_the_registry_and_train_longer(tmp_path: Path, mlflow_store: str, prefect_harness: None) -> None:
    packed_data(tmp_path / "data" / "prepared")
    params = tiny_params(train={"stab_kimg": 0.032, "fade_kimg": 0.032, "snapshot_kimg": 1.0, "tick_kimg": 0.016})
    write_params(tmp_path / "params.yaml", params)
    client = store.setup(tmp_path)

    # v1: 8x8 only.
    v1 = train_flow(params_path="params.yaml", root=str(tmp_path), overrides=["train.max_resolution=8"])
    assert v1["version"] == "1" and v1["resolution"] == 8

    # Train longer: a raised final_kimg continues the same run directory from its last checkpoint.
    longer = train_flow(params_path="params.yaml", root=str(tmp_path),
                        overrides=["train.max_resolution=8", "train.final_kimg=0.032"])
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert summary["stages"]["8"]["start_kimg"] == pytest.approx(0.032) and summary["kimg"] == pytest.approx(0.064)
    assert longer["run_id"] == v1["run_id"] and len(list((tmp_path / "runs" / "train").iterdir())) == 1
    assert longer["version"] == "2"
    run = client.get_run(v1["run_id"]).data
    assert run.tags["continued.train.final_kimg"] == "0.0 -> 0.032"

    # v3: fine-tuned from v1 through the registry, growing on from 8x8 to 16x16.
    ft = train_flow(params_path="params.yaml", root=str(tmp_path),
                    overrides=["train.init_from=models:/pokemon-stylegan/1"])
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert set(summary["stages"]) == {"8", "16"} and summary["stages"]["8"]["start_kimg"] == 0.0
    assert ft["version"] == "3" and ft["resolution"] == 16
    mv = client.get_model_version("pokemon-stylegan", "3")
    assert mv.tags["parent.version"] == "pokemon-stylegan/1"
    assert mv.tags["parent.model_uri"] == "models:/pokemon-stylegan/1"
    assert mv.tags["parent.sha256"] == client.get_model_version("pokemon-stylegan", "1").tags["generator.sha256"]
    run = client.get_run(ft["run_id"]).data
    assert run.params["train.init_from"] == "models:/pokemon-stylegan/1" and run.tags["parent.version"]
    with pytest.raises(registry.RegistryError, match="has no alias 'nope'"):
        train_flow(params_path="params.yaml", root=str(tmp_path),
                   overrides=["train.init_from=models:/pokemon-stylegan@nope"])


def test_a_shipped_init_from_keeps_its_name_in_the_lineage(tmp_path: Path, mlflow_store: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """train.init_from: pretrained:NAME becomes the checked folder in the params, and the run's
    lineage tags name the shipped model and its weights' sha256."""
    from mlflow.tracking import MlflowClient

    from flows.train import resolve_init_from
    from stylegan import pretrained
    from stylegan.checkpoint import export_generator
    from stylegan.io import sha256_file
    from tests.helpers import tiny_generator

    folder = export_generator(tiny_generator(8), tmp_path / "shipped" / "toy").parent
    seen: list[str] = []
    monkeypatch.setattr(pretrained, "folder", lambda spec, root=None, verify=True: seen.append(spec) or folder)
    params = {"train": {"init_from": "pretrained:toy"}}
    tags = resolve_init_from(MlflowClient(mlflow_store), params, tmp_path, "pokemon-stylegan")
    assert seen == ["pretrained:toy"] and params["train"]["init_from"] == str(folder)
    assert tags["parent.pretrained"] == "pretrained:toy" and tags["parent.init_from"] == "pretrained:toy"
    assert tags["parent.sha256"] == sha256_file(folder / "generator.safetensors") and tags["parent.kind"] == "export"
