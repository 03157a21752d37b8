"""The trainer's view: packed arrays written by the preparation, gathered by index, mirrored on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan.config import DataConfig
from stylegan.data.prepare import FrameResult, write_prepared
from stylegan.data.transforms import pyramid
from stylegan.training.dataset import PackedDataset, available_resolutions


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """Six random images written through the streaming writer (fixed-size .npy headers)."""
    rng = np.random.default_rng(1)
    cfg = DataConfig(max_resolution=8, source=str(tmp_path))
    results = []
    for i in range(6):
        sq = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        row = {"source": f"{i}.png", "frame": 0, "variant": "", "content_hash": f"h{i}", "status": "ok", "reason": ""}
        results.append(FrameResult(row, pyramid(sq, cfg)))
    out = tmp_path / "prepared"
    write_prepared([results[:4], results[4:]], cfg, out)
    return out


@pytest.mark.parametrize("mmap", [True, False])
def test_batches_follow_the_given_indices(prepared: Path, mmap: bool) -> None:
    assert available_resolutions(prepared) == [4, 8]
    ds = PackedDataset(prepared, 8, mmap=mmap)
    full = np.load(prepared / "images_8.npy")
    assert len(ds) == 6 and full.shape == (6, 3, 8, 8)
    idx = np.array([5, 0, 5, 2])
    batch = ds.get_batch(idx)
    assert batch.dtype == torch.uint8 and torch.equal(batch, torch.from_numpy(full[idx]))
    assert torch.equal(ds[3], torch.from_numpy(full[3]))


def test_flips_mirror_only_the_chosen_rows(prepared: Path) -> None:
    ds = PackedDataset(prepared, 8)
    full = np.load(prepared / "images_8.npy")
    idx = np.array([1, 1, 4])
    batch = ds.get_batch(idx, flip=np.array([True, False, True])).numpy()
    assert np.array_equal(batch[0], full[1][..., ::-1])
    assert np.array_equal(batch[1], full[1])
    assert np.array_equal(batch[2], full[4][..., ::-1])


def test_missing_resolution_says_what_exists(prepared: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"available: \[4, 8\]"):
        PackedDataset(prepared, 16)
