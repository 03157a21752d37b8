"""benchmarks/gpu_kit.py: the folder a bare GPU box needs (sprites + weights) fits, unpacks to the
exact arrays `pokegan prepare` writes, and a damaged or oversized kit is refused without loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_kit
from stylegan.config import DataConfig
from stylegan.data.transforms import pyramid


def _sprites(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    imgs = np.full((n, 3, 64, 64), 255, np.uint8)
    imgs[:, :, 16:48, 16:48] = rng.randint(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # incompressible bodies
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images_64.npy", imgs)
    return root


def test_kit_round_trip_gives_the_prepared_pyramid(tmp_path: Path) -> None:
    data = _sprites(tmp_path / "data", 20)
    info = gpu_kit.prepare_kit(tmp_path / "kit", data, with_weights=False, say=lambda _: None)
    assert info["images"] == info["of"] == 20 and info["checkout_bytes"] > 0
    root, unpacked = gpu_kit.unpack_kit(tmp_path / "kit", tmp_path / "box")
    assert unpacked["sprites_sha256"] == info["sprites_sha256"]
    src = np.load(data / "images_64.npy")
    cfg = DataConfig(max_resolution=64)
    for i in (0, 7, 19):  # each level equals what prepare's own pyramid makes of the 64x64 image
        levels = pyramid(np.ascontiguousarray(src[i].transpose(1, 2, 0)), cfg)
        for level in levels:
            r = level.shape[-1]
            assert np.array_equal(np.load(root / f"images_{r}.npy")[i], level), r


def test_pyramid_levels_are_the_rounded_2x2_means_prepare_always_wrote() -> None:
    """The shared ``halve`` against the per-image HWC loop prepare had (frozen here)."""
    rng = np.random.RandomState(1)
    for _ in range(5):
        img = rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)
        expected, x = [img], img
        while x.shape[0] > 4:
            x16 = x.astype(np.uint16)
            x = ((x16[0::2, 0::2] + x16[1::2, 0::2] + x16[0::2, 1::2] + x16[1::2, 1::2] + 2) >> 2).astype(np.uint8)
            expected.append(x)
        got = pyramid(img, DataConfig(max_resolution=64))
        assert [g.shape for g in got] == [(3, r, r) for r in (4, 8, 16, 32, 64)]
        for g, e in zip(got, reversed(expected), strict=True):
            assert g.flags.c_contiguous and np.array_equal(g, e.transpose(2, 0, 1))


def test_kit_keeps_a_seeded_subset_when_not_all_fit(tmp_path: Path) -> None:
    data = _sprites(tmp_path / "data", 60)
    checkout = gpu_kit.checkout_bytes()
    one = len(gpu_kit._compress(np.load(data / "images_64.npy")[:1]))
    limit = (checkout + 64 * 1024 + 25 * one) / 2**20  # room for about 25 of the 60
    a = gpu_kit.prepare_kit(tmp_path / "a", data, seed=3, limit_mib=limit, with_weights=False, say=lambda _: None)
    b = gpu_kit.prepare_kit(tmp_path / "b", data, seed=3, limit_mib=limit, with_weights=False, say=lambda _: None)
    assert 10 < a["images"] < 60 and a["of"] == 60 and a["seed"] == 3
    assert a["sprites_sha256"] == b["sprites_sha256"]  # same seed, same subset, same bytes
    root, _ = gpu_kit.unpack_kit(tmp_path / "a", tmp_path / "box")
    rows = gpu_kit._select(60, a["images"], 3)
    assert np.array_equal(np.load(root / "images_64.npy"), np.load(data / "images_64.npy")[rows])


def test_a_kit_over_the_limit_fails_and_keeps_the_old_one(tmp_path: Path) -> None:
    data = _sprites(tmp_path / "data", 10)
    gpu_kit.prepare_kit(tmp_path / "kit", data, with_weights=False, say=lambda _: None)
    before = (tmp_path / "kit" / "kit.json").read_text()
    with pytest.raises(gpu_kit.KitError, match=r"leave nothing|exceeds"):
        gpu_kit.prepare_kit(tmp_path / "kit", data, limit_mib=gpu_kit.checkout_bytes() / 2**20, with_weights=False)
    assert (tmp_path / "kit" / "kit.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_a_damaged_kit_is_refused_by_name(tmp_path: Path) -> None:
    data = _sprites(tmp_path / "data", 10)
    gpu_kit.prepare_kit(tmp_path / "kit", data, with_weights=False, say=lambda _: None)
    blob = tmp_path / "kit" / gpu_kit.SPRITES_NAME
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(gpu_kit.KitError, match=r"sha256 differs.*gpu_kit\.sh"):
        gpu_kit.unpack_kit(tmp_path / "kit", tmp_path / "box")
    assert not (tmp_path / "box" / "kit.json").exists()
    with pytest.raises(gpu_kit.KitError, match="no GPU kit"):
        gpu_kit.read_kit(tmp_path / "nowhere")
    (tmp_path / "kit" / "kit.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(gpu_kit.KitError, match="not a version-1 GPU kit"):
        gpu_kit.read_kit(tmp_path / "kit")


def test_missing_sprites_say_how_to_make_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_kit.main(["--data", str(tmp_path), "--out", str(tmp_path / "kit")]) == 2
    assert "--prepare-only" in capsys.readouterr().err and not (tmp_path / "kit").exists()
