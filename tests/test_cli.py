from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.checkpoint import load_checkpoint, load_generator
from stylegan.cli import main
from stylegan.sampling import generate
from stylegan.training.networks import Generator
from tests.helpers import tiny_model_config, write_cli_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    # Other evaluate keys are ignored by train.
    return write_cli_project(tmp_path, images=16, kimg=0.008, grid_seeds=[0, 1], evaluate={"num_samples": 10})


def test_train_then_sample(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, export = project / "run", project / "export"
    rc = main(["train", "--params", str(project / "params.yaml"), "--set", "train.lr=0.002",
               "--run-dir", str(run), "--export", str(export)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "loss_G" in out and "exported G_ema" in out
    state = load_checkpoint(run / "checkpoints" / "stage-8.pt")
    assert state["train_config"]["lr"] == 0.002 and state["cur_nimg"] == 24  # 8 + 8 + 8 images
    G = load_generator(export)
    assert G.img_resolution == 8

    # Running again resumes and, the schedule being done, trains nothing more.
    assert main(["train", "--params", str(project / "params.yaml"), "--set", "train.lr=0.002",
                 "--run-dir", str(run)]) == 0
    assert "resumed from" in capsys.readouterr().out

    rc = main(["sample", "--model", str(export), "--seeds", "0-2,7", "--psi", "0.5", "--out",
               str(project / "samples"), "--grid", str(project / "grid.png")])
    assert rc == 0
    files = sorted(p.name for p in (project / "samples").iterdir())
    assert files == ["seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    img = np.asarray(Image.open(project / "samples" / "seed0007.png"))
    # The same batch as the CLI drew (conv results depend on the batch size in the last bits).
    assert np.array_equal(img, generate(G, seeds=[0, 1, 2, 7], truncation_psi=0.5)[3])
    assert np.abs(img.astype(int) - generate(G, seeds=[7], truncation_psi=0.5)[0]).max() <= 1
    assert Image.open(project / "grid.png").size == (16, 16)  # 4 images of 8x8 in a 2x2 grid


def test_train_one_stage_with_data_override(project: Path) -> None:
    data2 = project / "other-data"
    data2.mkdir()
    np.save(data2 / "images_4.npy", np.zeros((8, 3, 4, 4), np.uint8))
    np.save(data2 / "images_8.npy", np.zeros((8, 3, 8, 8), np.uint8))
    rc = main(["train", "--params", str(project / "params.yaml"), "--data", str(data2),
               "--run-dir", str(project / "run"), "--stage", "4"])
    assert rc == 0
    ckpts = {p.name for p in (project / "run" / "checkpoints").iterdir()}
    assert "stage-4.pt" in ckpts and "stage-8.pt" not in ckpts


def test_train_errors_are_one_clear_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--params", str(project / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--params", str(project / "params.yaml"), "--set", "train.lrr=1",
                 "--run-dir", str(project / "run")]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert main(["train", "--params", str(project / "params.yaml"), "--data", str(project / "empty"),
                 "--run-dir", str(project / "run")]) == 2
    assert "missing" in capsys.readouterr().err


def test_sample_errors(project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["sample", "--model", str(project / "missing"), "--out", str(project / "s")]) == 2
    assert "no exported generator" in capsys.readouterr().err
    assert main(["sample", "--model", str(project), "--seeds", "9-1"]) == 2
    assert "bad seed spec" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["sample", "--model", str(project), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "flows.sample", None)  # as if the pipeline extra were absent
    assert main(["sample", "--model", "models:/pokemon-stylegan@champion", "--out", str(project / "s")]) == 2
    assert "pipeline extra" in capsys.readouterr().err


def test_sample_registry_hook_uses_the_flows_loader(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_model_config(max_resolution=4)
    G = Generator(cfg).eval()
    seen: list[str] = []

    def load_registered_generator(uri: str) -> Generator:
        seen.append(uri)
        return G

    fake = types.ModuleType("flows.sample")
    fake.load_registered_generator = load_registered_generator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.sample", fake)
    monkeypatch.setitem(sys.modules, "flows", types.ModuleType("flows"))
    rc = main(["sample", "--model", "models:/pokemon-stylegan@champion", "--seeds", "0-1", "--out",
               str(project / "s")])
    assert rc == 0 and seen == ["models:/pokemon-stylegan@champion"]
    assert len(list((project / "s").glob("*.png"))) == 2
