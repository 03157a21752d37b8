"""Bad input to the CLI: one line on stderr naming what is wrong, exit code 2, nothing lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.checkpoint import export_generator
from stylegan.cli import main
from stylegan.config import ModelConfig
from stylegan.training.networks import Generator
from tests.helpers import TINY_MODEL, write_cli_project


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "g"
    export_generator(Generator(ModelConfig(**TINY_MODEL)), out)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_cli_project(tmp_path, images=8, kimg=0.004, grid_seeds=[0],
                      evaluate={"num_samples": 4, "num_real": 8, "cache_dir": str(tmp_path / "cache")})
    (tmp_path / "a_file").write_text("keep me\n")
    return tmp_path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """The command exits 2 with one stderr line (no traceback) that contains every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
    return err


# --- pokegan sample ---------------------------------------------------------------------------


@pytest.mark.parametrize("psi", ["5", "-1", "nan"])
def test_sample_psi_out_of_range(model: Path, tmp_path: Path, psi: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["sample", "--model", str(model), "--seeds", "0", "--psi", psi, "--out", str(tmp_path / "s")],
           capsys, "--psi must be in [0, 1]")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("cutoff", ["0", "-1", "99"])
def test_sample_cutoff_out_of_range(model: Path, tmp_path: Path, cutoff: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["sample", "--model", str(model), "--seeds", "0", "--cutoff", cutoff, "--out", str(tmp_path / "s")],
           capsys, "--cutoff must be in 1..4")


def test_sample_huge_seed_range_fails_fast(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Used to build a list of 10**9 ints (the process was killed for memory).
    _fails(["sample", "--model", str(model), "--seeds", "0-999999999", "--out", str(tmp_path / "s")],
           capsys, "'0-999999999'", "smaller ranges")


def test_sample_out_is_a_file(model: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["sample", "--model", str(model), "--seeds", "0", "--out", str(project / "a_file")],
           capsys, "--out", "is a file")
    _fails(["sample", "--model", str(model), "--seeds", "0", "--out", str(project / "s"),
            "--grid", str(project / "a_file" / "grid.png")], capsys, "--grid", "is a file")
    assert (project / "a_file").read_text() == "keep me\n"


def test_sample_grid_is_a_folder(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g").mkdir()
    _fails(["sample", "--model", str(model), "--seeds", "0", "--out", str(tmp_path / "s"),
            "--grid", str(tmp_path / "g")], capsys, "--grid", "is a folder")


def test_sample_unknown_device(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["sample", "--model", str(model), "--seeds", "0", "--device", "tpu", "--out", str(tmp_path / "s")],
           capsys, "unknown device 'tpu'")


def test_sample_model_is_not_an_export(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Used to say "params.yaml has no params.json next to it; re-export the generator".
    ckpt = project / "ckpt-000000008.pt"
    ckpt.write_bytes(b"not read")
    for path in (project / "params.yaml", ckpt):
        _fails(["sample", "--model", str(path), "--seeds", "0", "--out", str(project / "s")],
               capsys, "is not an exported generator", "--export")


# --- pokegan train ----------------------------------------------------------------------------


def test_train_bad_numbers(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--params", str(project / "params.yaml"), "--run-dir", str(project / "run")]
    for extra, needle in ((["--max-steps", "-1"], "--max-steps: must be >= 0"),
                          (["--threads", "0"], "--threads: must be >= 1")):
        with pytest.raises(SystemExit) as exc:  # argparse errors exit 2 with a usage line
            main(base + extra)
        assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not (project / "run").exists()


def test_train_paths_that_are_files(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = str(project / "params.yaml")
    _fails(["train", "--params", params, "--run-dir", str(project / "a_file")], capsys, "--run-dir", "is a file")
    # --export is checked before training, not after minutes of it.
    _fails(["train", "--params", params, "--run-dir", str(project / "run"), "--export", str(project / "a_file")],
           capsys, "--export", "is a file")
    assert not (project / "run").exists()
    assert (project / "a_file").read_text() == "keep me\n"


@pytest.mark.parametrize(("text", "needle"), [
    ("train: [1, 2\n", "is not valid YAML"),
    ("train: 5\n", "train must be a mapping"),
])
def test_train_bad_params_file(project: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "bad.yaml").write_text(text)
    _fails(["train", "--params", str(project / "bad.yaml"), "--run-dir", str(project / "run")], capsys, needle)


def test_train_params_is_a_folder(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["train", "--params", str(project), "--run-dir", str(project / "run")], capsys, "is not a file")


def test_truncated_array_named(project: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = project / "prepared" / "images_8.npy"
    path.write_bytes(path.read_bytes()[:300])  # an interrupted copy
    _fails(["evaluate", "--model", str(model), "--params", str(project / "params.yaml"),
            "--out", str(project / "m" / "eval.json"), "--reports", str(project / "rep")],
           capsys, "images_8.npy is truncated", "re-run the prepare stage")


# --- pokegan evaluate -------------------------------------------------------------------------


def test_evaluate_bad_outputs_keep_old_metrics(project: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--model", str(model), "--params", str(project / "params.yaml")]
    (project / "m").mkdir()
    good = project / "m" / "eval.json"
    good.write_text('{"swd": 1.0}\n')
    _fails([*base, "--out", str(project / "m"), "--reports", str(project / "rep")], capsys, "--out", "is a folder")
    _fails([*base, "--out", str(project / "a_file" / "e.json"), "--reports", str(project / "rep")],
           capsys, "--out", "is a file")
    _fails([*base, "--out", str(good), "--reports", str(project / "a_file")], capsys, "--reports", "is a file")
    _fails([*base, "--out", str(good), "--reports", str(project / "rep"), "--ticks", str(project / "none.csv")],
           capsys, "--ticks", "does not exist")
    _fails([*base, "--out", str(good), "--reports", str(project / "rep"), "--set", "evaluate.truncation_psi=7"],
           capsys, "evaluate.truncation_psi must be in [0, 1]")
    _fails([*base, "--out", str(good), "--reports", str(project / "rep"), "--device", "tpu"],
           capsys, "unknown device")
    assert good.read_text() == '{"swd": 1.0}\n'
    assert not (project / "rep").exists()


# --- pokegan prepare --------------------------------------------------------------------------


@pytest.fixture
def sprites(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        img = np.full((24, 24, 3), 255, np.uint8)
        img[4:20, 4 + i : 12 + i] = (40 * i, 100, 200)
        Image.fromarray(img).save(src / f"s{i}.png")
    return src


def test_prepare_refuses_to_replace_a_file_or_a_foreign_folder(
    sprites: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text("data: {}\n")  # not the checkout's params.yaml
    common = ["prepare", "--params", str(tmp_path / "p.yaml"), "--root", str(tmp_path), "--set", f"source={sprites}",
              "--set", "max_resolution=8",
              "--set", "min_size=8", "--set", "workers=1"]
    (tmp_path / "a_file").write_text("keep me\n")
    # Used to move the file aside, swap a folder in and crash deleting the file as a folder.
    _fails([*common, "--set", "out_dir=a_file"], capsys, "a_file is a file")
    assert (tmp_path / "a_file").read_text() == "keep me\n"
    # A folder that is not an earlier output (here: the source itself) would be replaced whole.
    _fails([*common, "--set", f"out_dir={sprites}"], capsys, "without summary.json")
    assert sorted(p.name for p in sprites.iterdir()) == ["s0.png", "s1.png", "s2.png"]
    # An earlier output is replaced as before.
    assert main([*common, "--set", "out_dir=prepared"]) == 0
    assert main([*common, "--set", "out_dir=prepared"]) == 0
    assert (tmp_path / "prepared" / "images_8.npy").is_file()


def test_prepare_negative_workers(sprites: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text("data: {}\n")
    _fails(["prepare", "--params", str(tmp_path / "p.yaml"), "--root", str(tmp_path), "--set", f"source={sprites}",
            "--workers", "-3"],
           capsys, "workers must be >= 0")


def test_train_corrupt_checkpoint_is_one_warning_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An interrupted copy of the newest checkpoint: the run resumes from the one before, says so in one line.
    argv = ["train", "--params", str(project / "params.yaml"), "--run-dir", str(project / "run"), "--max-steps", "1"]
    assert main(argv) == 0
    assert main(argv) == 0
    ckpts = sorted((project / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 2
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:500])
    capsys.readouterr()
    with pytest.warns(UserWarning) as record:
        assert main(argv) == 0
    assert "skipped unreadable checkpoint" in str(record[0].message)
    assert "delete it to resume from the previous one" not in str(record[0].message)  # it already did
    assert f"resumed from {ckpts[0]}" in capsys.readouterr().out
