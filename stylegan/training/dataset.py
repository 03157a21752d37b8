"""The trainer's view of the data: one packed uint8 array ``(N, 3, R, R)`` per resolution.

Files are ``<root>/images_<R>.npy``, opened as memory maps so a 256x256 set never has to
fit in memory. Batches are gathered by index; the caller owns the random state (so that a
resumed run draws exactly the batches an uninterrupted run would).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def array_path(root: str | Path, resolution: int) -> Path:
    return Path(root) / f"images_{resolution}.npy"


def available_resolutions(root: str | Path) -> list[int]:
    found = []
    for p in Path(root).glob("images_*.npy"):
        suffix = p.stem.split("_", 1)[1]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


class PackedDataset(Dataset):
    """Images at one resolution, as uint8 CHW tensors."""

    def __init__(
        self,
        root: str | Path,  # folder holding images_<R>.npy files
        resolution: int,  # which array to open
        mmap: bool = True,  # False loads the whole array into memory (faster random access)
    ) -> None:
        path = array_path(root, resolution)
        if not path.exists():
            have = available_resolutions(root)
            hint = (f"available: {have}" if have
                    else "no packed arrays there; run `dvc repro prepare` (or `pokegan prepare`)")
            raise FileNotFoundError(f"no {resolution}x{resolution} data at {path} ({hint})")
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:  # truncated or not an .npy: say which file and what to do
            raise ValueError(f"{path} is truncated or not a packed array ({exc}); re-run the prepare stage") from exc
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 3 or arr.shape[2:] != (resolution, resolution):
            raise ValueError(
                f"{path} holds {arr.dtype} {arr.shape}; expected uint8 (N, 3, {resolution}, {resolution}). "
                "Re-run the prepare stage."
            )
        if arr.shape[0] == 0:
            raise ValueError(f"{path} holds no images; re-run the prepare stage on a source with usable images")
        self.root = Path(root)
        self.resolution = resolution
        self.array = arr

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index]))  # a writable copy, not a view of the read-only map

    def get_batch(
        self,
        indices: np.ndarray | torch.Tensor,  # rows to gather, any order, repeats allowed
        flip: np.ndarray | torch.Tensor | None = None,  # bool (B,): mirror these horizontally; None = no flips
    ) -> torch.Tensor:
        """uint8 tensor ``(B, 3, R, R)`` of the given rows (sorted reads are faster on a memmap)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        rows = self.array[idx[order]]
        out = np.empty_like(rows)
        out[order] = rows
        if flip is not None:
            mask = np.asarray(flip, dtype=bool)
            assert mask.shape == idx.shape, f"flip has shape {mask.shape}, indices {idx.shape}"
            out[mask] = out[mask][..., ::-1]
        return torch.from_numpy(out)
