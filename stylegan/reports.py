"""Visual reports of a generator: the figures of the StyleGAN paper, plus loss curves.

Sample grid, truncation sweep (psi 1 -> 0), style-mixing grids (coarse / middle / fine),
noise variation with its per-pixel standard deviation, a latent interpolation as an animated
GIF, and loss curves from the training ticks. Every figure is deterministic per seed and
written atomically; drawing uses Pillow only (no plotting library in the library's deps).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from stylegan import sampling
from stylegan.io import atomic_write_bytes
from stylegan.sampling import save_png

TRUNCATION_PSIS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
STYLE_RANGES = ("coarse", "middle", "fine")
LOSS_COLUMNS = ("loss_G", "loss_D")
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _upscale(image: Image.Image, tile: int, min_tile: int = 128) -> Image.Image:
    """Nearest-neighbour enlargement so that tiles of ``tile`` px show at least ``min_tile`` px."""
    s = max(1, math.ceil(min_tile / tile))
    return image.resize((image.width * s, image.height * s), Image.NEAREST) if s > 1 else image


def sample_grid(G: torch.nn.Module, seeds: Sequence[int], truncation_psi: float = 1.0) -> Image.Image:
    return sampling.image_grid(sampling.generate(G, seeds=seeds, truncation_psi=truncation_psi))


def truncation_sweep(G: torch.nn.Module, seeds: Sequence[int], psis: Sequence[float] = TRUNCATION_PSIS) -> Image.Image:
    """One row per seed, one column per psi (1 = untruncated ... 0 = the average face, w_avg)."""
    cols = [sampling.generate(G, seeds=seeds, truncation_psi=psi) for psi in psis]
    tiles = np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])
    return sampling.image_grid(tiles, cols=len(psis))


def noise_figure(G: torch.nn.Module, seed: int, n: int = 8) -> tuple[Image.Image, np.ndarray]:
    """``n`` noise realisations of one w, then the per-pixel std map (normalised to its max)."""
    images, std = sampling.noise_variation(G, seed, n)
    peak = float(std.max())
    grey = (255 * std / peak).astype(np.uint8) if peak > 0 else np.zeros_like(std, dtype=np.uint8)
    std_tile = np.repeat(grey[None, :, :, None], 3, axis=3)
    return sampling.image_grid(np.concatenate([images, std_tile]), cols=n + 1), std


def interpolation_gif(G: torch.nn.Module, seeds: Sequence[int], steps: int, path: Path, ms_per_frame: int = 80) -> Path:
    """Walk through ``seeds`` in W (and back to the first, so the loop is seamless) as an animated GIF."""
    frames = sampling.interpolate(G, [*seeds, seeds[0]], steps=steps, space="w")[:-1]
    scale = max(1, 128 // frames.shape[1])
    pil = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=ms_per_frame, loop=0)
    return atomic_write_bytes(path, buf.getvalue())


def captioned_grid(images: np.ndarray, captions: Sequence[Sequence[str]], cols: int = 8, tile: int = 128,
                   font_size: int = 12) -> Image.Image:
    """uint8 ``(N, H, W, 3)`` images as a grid of ``tile``-px tiles, each with its caption lines
    under it (the first line bold-ish: drawn twice, one pixel apart). White ground, black text."""
    from PIL import ImageFont

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    font = ImageFont.load_default(size=font_size)
    lines = max((len(c) for c in captions), default=0)
    line_h = font_size + 3
    cell_w, cell_h = tile + 8, tile + 6 + lines * line_h
    rows = max(1, math.ceil(len(images) / cols))
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * cell_w + 4, (i // cols) * cell_h + 3
        canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x, y))
        for j, text in enumerate(caption):
            while text and draw.textlength(text, font=font) > cell_w - 4:
                text = text[:-1]  # clip, never spill into the next tile
            ty = y + tile + 2 + j * line_h
            draw.text((x, ty), text, fill=(0, 0, 0), font=font)
            if j == 0:
                draw.text((x + 1, ty), text, fill=(0, 0, 0), font=font)
    return canvas


def read_ticks(path: str | Path) -> pd.DataFrame:
    """Training ticks from the trainer's CSV (or a JSON list / JSON-lines of tick dicts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tick log at {path}")
    if path.suffix == ".csv":
        df = pd.read_csv(path)
    elif path.suffix == ".jsonl":
        df = pd.read_json(path, lines=True)
    else:
        df = pd.read_json(path)
    if "kimg" not in df.columns:
        raise ValueError(f"{path} has no 'kimg' column; expected the trainer's ticks (kimg, loss_G, loss_D, ...)")
    return df


def line_plot(
    x: np.ndarray,
    series: dict[str, np.ndarray],
    *,
    title: str,
    xlabel: str,
    size: tuple[int, int] = (640, 360),
) -> Image.Image:
    """A minimal line chart (axes, min/max ticks, legend) drawn with Pillow."""
    w, h = size
    left, right, top, bottom = 56, 12, 24, 28
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 4), title, fill="black")
    ys = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(1)])
    ys = ys if ys.size else np.zeros(1)
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1
    x0, x1 = (float(np.nanmin(x)), float(np.nanmax(x))) if len(x) else (0.0, 1.0)
    if x1 - x0 < 1e-12:
        x1 = x0 + 1

    def px(xv: np.ndarray, yv: np.ndarray) -> list[tuple[float, float]]:
        u = left + (xv - x0) / (x1 - x0) * (w - left - right)
        v = top + (y1 - yv) / (y1 - y0) * (h - top - bottom)
        return list(zip(u.tolist(), v.tolist(), strict=True))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text((2, top - 4), f"{y1:.3g}", fill="black")
    d.text((2, h - bottom - 8), f"{y0:.3g}", fill="black")
    d.text((left, h - bottom + 4), f"{x0:.3g}", fill="black")
    d.text((w - right - 40, h - bottom + 4), f"{x1:.3g}", fill="black")
    d.text(((w - len(xlabel) * 6) // 2, h - bottom + 14), xlabel, fill="black")
    for i, (name, yv) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        ok = np.isfinite(yv) & np.isfinite(x)
        pts = px(x[ok], yv[ok])
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
        d.text((w - right - 80, top + 4 + 12 * i), name, fill=colour)
    return img


def loss_curves(ticks: pd.DataFrame, columns: Sequence[str] = LOSS_COLUMNS) -> Image.Image:
    present = [c for c in columns if c in ticks.columns]
    if not present:
        raise ValueError(f"the tick log has none of the columns {list(columns)}")
    x = ticks["kimg"].to_numpy(dtype=float)
    series = {c: ticks[c].to_numpy(dtype=float) for c in present}
    return line_plot(x, series, title="GAN losses", xlabel="kimg (thousands of images shown)")


def write_reports(
    G: torch.nn.Module,
    reports_dir: str | Path,
    *,
    seed: int = 0,  # first seed of every figure
    truncation_psi: float = 1.0,  # for the sample grid
    grid_size: int = 64,  # images in the sample grid
    interpolation_steps: int = 16,  # frames between two keyframes of the GIF
    ticks: str | Path | None = None,  # the training tick log; None = no loss curves
    log: Callable[[str], None] = print,  # one-line messages about skipped figures
) -> list[Path]:
    """All figures under ``reports_dir``; returns the written paths."""
    out = Path(reports_dir)
    written: list[Path] = []
    r = int(G.img_resolution)
    seeds = list(range(seed, seed + grid_size))
    written.append(save_png(_upscale(sample_grid(G, seeds, truncation_psi), r), out / "samples.png"))
    written.append(save_png(_upscale(truncation_sweep(G, seeds[:6]), r), out / "truncation_sweep.png"))
    sources, destinations = list(range(seed, seed + 5)), list(range(seed + 5, seed + 11))
    for name in STYLE_RANGES:
        try:
            grid = sampling.style_mixing_grid(G, sources, destinations, styles=name)
        except ValueError as exc:  # e.g. a 32x32 generator has no "fine" layers
            log(f"style mixing ({name}) skipped: {exc}")
            continue
        written.append(save_png(_upscale(grid, r), out / f"style_mixing_{name}.png"))
    noise_grid, std = noise_figure(G, seed)
    written.append(save_png(_upscale(noise_grid, r), out / "noise_variation.png"))
    written.append(atomic_write_bytes(out / "noise_std.npy", _npy_bytes(std)))
    written.append(interpolation_gif(G, seeds[:4], interpolation_steps, out / "interpolation.gif"))
    if ticks is not None:
        try:
            written.append(save_png(loss_curves(read_ticks(ticks)), out / "loss_curves.png"))
        except (FileNotFoundError, ValueError) as exc:
            log(f"loss curves skipped: {exc}")
    return written


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()
