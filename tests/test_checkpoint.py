from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan import checkpoint as ckpt
from stylegan.checkpoint import (
    CheckpointError,
    capture_rng_state,
    export_generator,
    load_checkpoint,
    load_generator,
    params_hash,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from stylegan.config import TrainConfig
from stylegan.training.networks import Generator
from tests.helpers import tiny_model_config as tiny_model


class Evil:
    """Stands for any pickled object a hostile checkpoint could smuggle in."""

    def __reduce__(self) -> tuple:
        return (print, ("this would run on load",))


def test_save_load_roundtrip_with_weights_only(tmp_path: Path) -> None:
    G = Generator(tiny_model())
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    G(torch.randn(2, 16)).square().mean().backward()
    opt.step()
    state = {"G": G.state_dict(), "opt_G": opt.state_dict(), "cur_nimg": 123, "model_config": {"z_dim": 16},
             "rng": capture_rng_state(torch.Generator().manual_seed(3))}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == "pokegan-checkpoint" and loaded["cur_nimg"] == 123
    assert all(torch.equal(loaded["G"][k], v) for k, v in G.state_dict().items())
    opt2 = torch.optim.Adam(Generator(tiny_model()).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["opt_G"])  # the optimizer state survives weights_only loading
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.0, 0.99)


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"cur_nimg": 1, "w": torch.ones(3)})

    def crashing_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full (simulated crash mid-write)")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"cur_nimg": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["cur_nimg"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".ckpt-000000010.pt.abc123.tmp").write_bytes(b"killed mid-write")
    keep = tmp_path / "ckpt-000000010.pt"
    keep.write_bytes(b"x")
    removed = ckpt.remove_stale_temp_files(tmp_path)
    assert len(removed) == 1 and [p.name for p in tmp_path.iterdir()] == [keep.name]


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pokegan checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "pokegan-checkpoint", "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a pokegan checkpoint"):
        load_checkpoint(path)


def test_rng_states_roundtrip_through_a_checkpoint(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "r.pt", {"rng": capture_rng_state(gen)})
    expected = (torch.rand(3), np.random.randn(3), random.random(), torch.rand(3, generator=gen))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    gen.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], gen)
    got = (torch.rand(3), np.random.randn(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_prune_keeps_the_newest_rolling_and_all_stage_checkpoints(tmp_path: Path) -> None:
    for n in (10, 20, 30, 40):
        (tmp_path / ckpt.rolling_name(n)).write_bytes(b"x")
    (tmp_path / ckpt.stage_name(8)).write_bytes(b"x")
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000030.pt", "ckpt-000000040.pt", "stage-8.pt"]


def test_params_hash_ignores_bookkeeping_only() -> None:
    m = tiny_model()
    base = params_hash(m, TrainConfig())
    assert params_hash(m, TrainConfig(tick_kimg=1, device="cpu", keep_checkpoints=9)) == base
    assert params_hash(m, TrainConfig(lr=0.01)) != base
    assert params_hash(tiny_model(mapping_layers=3), TrainConfig()) != base
    assert params_hash(tiny_model(fused_scale=True), TrainConfig()) != base


def test_export_is_trimmed_pickle_free_and_reproduces_g_ema(tmp_path: Path) -> None:
    G = Generator(tiny_model()).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not the init: the weights must really travel
        G.mapping.w_avg.normal_()
    out = export_generator(G, tmp_path / "export", resolution=8, metadata={"kimg": 1.5})
    assert out.name == "generator.safetensors"
    info = json.loads((tmp_path / "export" / "generator.json").read_text())
    assert info["resolution"] == 8 and info["model_config"]["max_resolution"] == 8 and info["metadata"]["kimg"] == 1.5
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["generator.json", "generator.safetensors"]
    for source in (tmp_path / "export", out):  # the folder or the weights file
        G2 = load_generator(source)
        assert G2.img_resolution == 8 and not G2.training
        assert not any(p.requires_grad for p in G2.parameters())
        assert not any(k.startswith("synthesis.b16") for k in G2.state_dict())
        z = torch.randn(3, 16)
        with torch.no_grad():
            a = G(z, resolution=8, noise_mode="const", truncation_psi=0.7)
            b = G2(z, noise_mode="const", truncation_psi=0.7)
        assert torch.equal(a, b)


def test_export_carries_fused_scale_and_exports_without_it_still_load(tmp_path: Path) -> None:
    G = Generator(tiny_model(fused_scale=True)).eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    export_generator(G, tmp_path / "e", resolution=16)
    config = tmp_path / "e" / "generator.json"
    info = json.loads(config.read_text())
    assert info["model_config"]["fused_scale"] is True
    z = torch.randn(3, 16)
    with torch.no_grad():
        expected = G(z, noise_mode="const")
        G2 = load_generator(tmp_path / "e")
        assert G2.synthesis.b16.conv0.fused_scale
        assert torch.equal(G2(z, noise_mode="const"), expected)
        # An export written before the key existed: "auto" (unfused below 128), same weights, same images.
        del info["model_config"]["fused_scale"]
        config.write_text(json.dumps(info))
        G3 = load_generator(tmp_path / "e")
        assert G3.cfg.fused_scale == "auto" and not G3.synthesis.b16.conv0.fused_scale
        torch.testing.assert_close(G3(z, noise_mode="const"), expected)


def test_export_bytes_are_identical_for_identical_weights(tmp_path: Path) -> None:
    # DVC's output hash and the registry's same-weights check compare file bytes: exporting the
    # same generator again must write the same bytes (safetensors' metadata order once varied).
    G = Generator(tiny_model()).eval()
    blobs = set()
    for i in range(8):
        export_generator(G, tmp_path / f"e{i}", resolution=8, metadata={"kimg": 1.5, "run": "x"})
        blobs.add((tmp_path / f"e{i}" / "generator.safetensors").read_bytes())
        blobs.add((tmp_path / f"e{i}" / "generator.json").read_bytes())
    assert len(blobs) == 2


def test_load_generator_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no exported generator"):
        load_generator(tmp_path / "missing")
    export_generator(Generator(tiny_model()), tmp_path / "e")
    (tmp_path / "e" / "generator.safetensors").write_bytes(b"\x01\x02 not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_generator(tmp_path / "e")
    export_generator(Generator(tiny_model()), tmp_path / "f")
    (tmp_path / "f" / "generator.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"generator\.json"):
        load_generator(tmp_path / "f")
    with pytest.raises(CheckpointError, match="not one of"):
        export_generator(Generator(tiny_model()), tmp_path / "g", resolution=32)


def test_written_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    # Checkpoints, exports and images must be readable by whoever reads the run (a tracker, a
    # server, a teammate): the mode a plain open() gives under the current umask.
    import stat
    from importlib.util import find_spec

    from stylegan.sampling import save_animation, save_png

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    usual = stat.S_IMODE(plain.stat().st_mode)
    assert usual & 0o044, "the test needs a umask that lets group/others read"
    paths = [
        save_checkpoint(tmp_path / "ckpt.pt", {"x": torch.zeros(1)}),
        export_generator(Generator(tiny_model(max_resolution=8)), tmp_path / "export"),
        save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "img.png"),
        save_animation(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "anim.gif"),
    ]
    if find_spec("imageio_ffmpeg") is not None:  # ffmpeg writes by name, into stylegan.io.atomic_path's temp file
        paths.append(save_animation(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "anim.mp4"))
    for p in [*paths, tmp_path / "export" / "generator.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == usual, f"{p.name}: {oct(p.stat().st_mode)} != {oct(usual)}"


def test_dvc_train_stage_and_the_run_key_read_one_list_of_training_code(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The train stage depends on the ``stylegan/training`` folder, whose sources are exactly what the
    run key hashes; its other library deps cover every module the train stage imports, and a file
    added to the package (or edited in it) changes the run key with no list to update."""
    import subprocess
    import sys

    yaml = pytest.importorskip("yaml")
    root = Path(ckpt.__file__).resolve().parents[1]
    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    lib = [d.removeprefix("stylegan/") for d in deps if d.startswith("stylegan/")]
    assert len(lib) == len(set(lib)) and "training" in lib
    assert all((root / "stylegan" / name).exists() for name in lib)
    assert root / "stylegan" / "training" == ckpt.TRAINING_PACKAGE
    hashed = {p.relative_to(root / "stylegan").as_posix() for p in ckpt.training_sources()}
    package = root / "stylegan" / "training"
    assert hashed == {p.relative_to(root / "stylegan").as_posix() for p in package.rglob("*.py")}
    assert {"training/networks.py", "training/trainer.py", "training/losses.py", "training/dataset.py"} <= hashed
    # What the train flow imports from the library (flows/train.py, its workers, the trainer).
    mods = ("training.trainer", "checkpoint", "config", "training.distributed", "io", "training.schedule", "shared",
            "training.transfer", "sampling")
    probe = (f"import sys; import {', '.join('stylegan.' + m for m in mods)}; "
             "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'stylegan'))")
    files = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root).stdout
    imported = {Path(f).resolve().relative_to(root / "stylegan").as_posix() for f in files.split()}
    covered = {f for f in imported if f.split("/")[0] in lib or f in lib}
    # Package __init__ files only name things (stylegan.data's and stylegan.metrics' lazily): they compute nothing.
    assert imported - covered <= {"__init__.py", "data/__init__.py", "metrics/__init__.py"}, imported - covered

    # One list: a new module in the package, or an edit to one, is a new run key.
    copy = tmp_path / "stylegan" / "training"
    copy.mkdir(parents=True)
    for src in ckpt.training_sources():
        (copy / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(ckpt, "TRAINING_PACKAGE", copy)
    same = ckpt.code_fingerprint()
    monkeypatch.setattr(ckpt, "TRAINING_PACKAGE", root / "stylegan" / "training")
    assert same == ckpt.code_fingerprint()
    monkeypatch.setattr(ckpt, "TRAINING_PACKAGE", copy)
    (copy / "new_loss.py").write_text("X = 1\n")
    added = ckpt.code_fingerprint()
    (copy / "networks.py").write_bytes((copy / "networks.py").read_bytes() + b"\n")
    assert len({same, added, ckpt.code_fingerprint()}) == 3
    (copy / "__pycache__").mkdir()
    edited = ckpt.code_fingerprint()
    (copy / "__pycache__" / "networks.cpython-311.pyc").write_bytes(b"bytecode")
    assert ckpt.code_fingerprint() == edited  # bytecode is not code
