"""Image transforms of one decoded frame: composite, crop to the content box, pad to a square,
resample once to data.max_resolution, then exact 2x2 means down to 4x4."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stylegan.config import DataConfig
from stylegan.data.decode import Rejected

BG_TOLERANCE = 8  # opaque images: a pixel is content when a channel differs from the background by more
_FILTERS = {
    "area": Image.Resampling.BOX,  # exact area averaging when shrinking; crisp blocks when enlarging
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resolutions(max_resolution: int) -> list[int]:
    return [2**i for i in range(2, max_resolution.bit_length())]


def square(a: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Composite onto the background, crop to the content box, pad to a square with margin."""
    bg = np.asarray(cfg.background, dtype=np.uint8)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.uint16)
        mask = a[..., 3] > 0
        rgb = ((a[..., :3] * alpha + bg.astype(np.uint16) * (255 - alpha) + 127) // 255).astype(np.uint8)
    else:
        rgb = a
        mask = (np.abs(a.astype(np.int16) - bg.astype(np.int16)) > BG_TOLERANCE).any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise Rejected("empty", "no content: every pixel is transparent or background")
    crop = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape[:2]
    side = max(h, w)
    pad = round(cfg.margin * side)
    size = side + 2 * pad
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[...] = bg
    y, x = (size - h) // 2, (size - w) // 2
    out[y : y + h, x : x + w] = crop
    return out


def halve(x: np.ndarray) -> np.ndarray:
    """Exact, rounded 2x2 means over the last two axes (uint8 in and out): each lower level of
    the pyramid, for one image (C, H, W) or a batch (N, C, H, W)."""
    x16 = x.astype(np.uint16)
    s = x16[..., 0::2, 0::2] + x16[..., 1::2, 0::2] + x16[..., 0::2, 1::2] + x16[..., 1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


def pyramid(square: np.ndarray, cfg: DataConfig) -> list[np.ndarray]:
    """[4x4, 8x8, ..., max] uint8 CHW; the top by the chosen filter, the rest by exact 2x2 means."""
    r = cfg.max_resolution
    if square.shape[0] == r:
        top = square
    else:
        top = np.asarray(Image.fromarray(square).resize((r, r), _FILTERS[cfg.resize_filter]))
    levels = [np.ascontiguousarray(top.transpose(2, 0, 1))]
    while levels[-1].shape[-1] > 4:
        levels.append(halve(levels[-1]))
    return levels[::-1]


