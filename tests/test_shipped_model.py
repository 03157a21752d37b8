"""The generators that ship in the repository (pretrained/sprites-32, pretrained/sprites-64): each
loads with its sha256s checked, draws its committed grid again on the CPU (bit for bit on the CPU
that drew it), names its samples as its card says, and samples and fine-tunes on a fresh clone with no network and no
pipeline run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylegan import pretrained, release, sampling
from stylegan.cli import main

NAME = "sprites-64"  # the GPU one: the fine-tuning overlay targets it
FOLDER = pretrained.ROOT / NAME
SHIPPED = {"sprites-32": 32, "sprites-64": 64}


@pytest.mark.parametrize(("name", "resolution"), sorted(SHIPPED.items()))
def test_the_shipped_model_is_indexed_small_and_loads_checked(name: str, resolution: int) -> None:
    folder = pretrained.ROOT / name
    entry = pretrained.index()[name]
    assert entry["resolution"] == resolution and entry["files"]["generator.safetensors"]
    assert (folder / "generator.safetensors").stat().st_size <= release.MAX_WEIGHTS_BYTES
    G = pretrained.load(pretrained.PREFIX + name)  # checks every sha256 in the index
    assert G.cfg.max_resolution == resolution and sum(p.numel() for p in G.parameters()) == json.loads(
        (folder / "release.json").read_text())["parameters"]


def test_the_default_is_the_best_shipped_model() -> None:
    """pokegan studio opens pretrained.DEFAULT: the shipped model with the lowest fd_dex."""
    fd = {name: json.loads((pretrained.ROOT / name / "release.json").read_text())["metrics"]["fd_dex"]
          for name in SHIPPED}
    assert pretrained.DEFAULT == min(fd, key=fd.get) == "sprites-32"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_committed_grid_is_redrawn_and_named_as_committed(name: str) -> None:
    """Bit for bit on the CPU that drew it; another CPU's float kernels (AVX-512 vs AVX2, oneDNN's
    choice of algorithm) round a few pixels one level the other way, and nothing more."""
    from stylegan.pokedex import load_pokedex
    from stylegan.pokedex.explain import explain

    folder = pretrained.ROOT / name
    G = pretrained.load(pretrained.PREFIX + name)
    images = sampling.generate(G, seeds=release.GRID_SEEDS, truncation_psi=release.GRID_PSI)
    drawn = np.asarray(sampling.image_grid(images, cols=8))
    diff = np.abs(drawn.astype(int) - np.asarray(Image.open(folder / "samples.png").convert("RGB")).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    committed = json.loads((folder / "looks_like.json").read_text())["samples"]
    found = explain(load_pokedex(pretrained.pokedex_dir(pretrained.PREFIX + name)), images)
    drawn_names = {str(s): e.to_dict() for s, e in zip(release.GRID_SEEDS, found, strict=True)}
    assert drawn_names.keys() == committed.keys()
    for seed, entry in drawn_names.items():  # same names and species; probabilities to the rounding above
        want = committed[seed]
        assert entry["name"] == want["name"], seed
        assert [m["species_id"] for m in entry["looks_like"]] == [m["species_id"] for m in want["looks_like"]], seed
        assert [m["prob"] for m in entry["looks_like"]] == pytest.approx([m["prob"] for m in want["looks_like"]],
                                                                          abs=2e-3), seed


def test_a_corrupted_or_swapped_shipped_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "pretrained"
    shutil.copytree(pretrained.ROOT, root)
    weights = root / NAME / "generator.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit inside a tensor
    weights.write_bytes(bytes(blob))
    with pytest.raises(pretrained.PretrainedError, match=r"sha256"):
        pretrained.load(pretrained.PREFIX + NAME, root=root)
    shutil.copyfile(FOLDER / "pokedex" / "pokedex.safetensors", weights)  # another file swapped in
    with pytest.raises(pretrained.PretrainedError, match=r"sha256"):
        pretrained.load(pretrained.PREFIX + NAME, root=root)


@pytest.mark.parametrize(("name", "resolution"), sorted(SHIPPED.items()))
def test_sample_named_creatures_out_of_the_box(name: str, resolution: int, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's quick start, from a folder with no pipeline outputs and no network."""
    monkeypatch.chdir(tmp_path)
    assert main(["models"]) == 0
    assert f"pretrained:{name}" in capsys.readouterr().out
    out = tmp_path / "samples"
    assert main(["sample", "--model", f"pretrained:{name}", "--seeds", "0-3", "--explain", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "looks_like.json").read_text())["samples"]
    assert sorted(report) == ["0", "1", "2", "3"]
    for seed, entry in report.items():
        assert f"seed {seed}: {entry['name']} (looks like" in printed and len(entry["looks_like"]) == 3
        assert Image.open(out / f"seed{int(seed):04d}.png").size == (resolution, resolution)


def test_finetune_from_the_shipped_model(tmp_path: Path) -> None:
    """train.init_from: pretrained:sprites-64 starts G_ema from the shipped weights at 64x64 and trains."""
    import torch

    from stylegan.training import Trainer
    from stylegan.training.transfer import read_init_source
    from tests.helpers import tiny_train_config, write_toy_data

    source = read_init_source(f"pretrained:{NAME}")
    assert source.resolution == 64 and source.sha256 == pretrained.index()[NAME]["files"]["generator.safetensors"]
    data = write_toy_data(tmp_path / "data", (64,), n=8)
    cfg = tiny_train_config(max_resolution=64, init_from=f"pretrained:{NAME}", batch_size=2, stab_kimg=0.004,
                            snapshot_kimg=1.0, grid_seeds=[0])
    ft = Trainer(source.model_config, cfg, data, tmp_path / "ft")
    assert [s.resolution for s in ft.stages] == [64]
    shipped = pretrained.load(f"pretrained:{NAME}").state_dict()
    assert all(torch.equal(ft.G.state_dict()[k], v) for k, v in shipped.items())
    ft.train_step()
    assert not all(torch.equal(ft.G.state_dict()[k], v) for k, v in shipped.items())


def test_the_finetune_overlay_matches_the_shipped_architecture() -> None:
    """params-finetune-64.yaml (docs/pretrained.md) merged onto params.yaml passes init_from's
    architecture check against the shipped model and starts the schedule at its resolution."""
    from stylegan import profile
    from stylegan.config import section
    from stylegan.training.transfer import effective_train_config

    repo = pretrained.ROOT.parent
    _, overlay, merged = profile.load(repo / "params-finetune-64.yaml", repo / "params.yaml")
    assert overlay["train"]["init_from"] == f"pretrained:{NAME}"
    train, source = effective_train_config(section(merged, "train"), section(merged, "model"))
    assert source is not None and source.resolution == train.start_resolution == 64
    assert section(merged, "data").max_resolution >= 64
