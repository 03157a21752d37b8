"""Sampling: images from seeds, truncation, style mixing, noise variation, interpolation, grids.

Every function is deterministic per seed: z comes from ``np.random.RandomState(seed)`` (the
convention of the reference implementations, so seeds mean the same across tools), and the
default ``noise_mode="const"`` uses the generator's stored noise buffers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylegan.io import atomic_path, atomic_write

StyleRange = str | tuple[int, int] | range


MAX_SEEDS = 1_000_000  # one call's seeds (ranges and lists); a typo'd range must fail, not fill memory
GRID_MAX = 256  # grids of a sampling run show the first GRID_MAX seeds (memory and readability)


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ranges inclusive); ints and lists pass through."""
    if isinstance(text, int):
        return parse_seeds([text])
    if not isinstance(text, str):
        seeds = []
        for s in text:  # a generator of a billion seeds stops at the bound, not at the memory limit
            if len(seeds) >= MAX_SEEDS:
                raise ValueError(f"over {MAX_SEEDS:,} seeds in one call; pass fewer (or sample in several calls)")
            seeds.append(int(s))
        if any(s < 0 or s >= 2**32 for s in seeds):
            raise ValueError(f"seeds must be in [0, 2**32), got {min(seeds)}..{max(seeds)}")
        return seeds
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)  # "-5" fails here: seeds are never negative
                if hi < lo:
                    raise ValueError
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:  # before building the list: 0-999999999 would exhaust memory
                    raise OverflowError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except OverflowError:
            raise ValueError(f"seed spec {text!r} asks for over {MAX_SEEDS:,} seeds; use smaller ranges") from None
        except ValueError:
            raise ValueError(f"bad seed spec {part!r} in {text!r}; use e.g. '0-63' or '1,5,9-12'") from None
    if not seeds:
        raise ValueError(f"no seeds in {text!r}; use e.g. '0-63' or '1,5,9-12'")
    if any(s < 0 or s >= 2**32 for s in seeds):
        raise ValueError(f"seeds must be in [0, 2**32), got {text!r}")
    return seeds


def seed_filename(seed: int) -> str:
    """NVIDIA's naming: seed0007.png (more digits only when the seed needs them)."""
    return f"seed{seed:04d}.png"


def _device_of(G: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else next(G.parameters()).device


def seeds_to_z(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """float32 ``(N, z_dim)``: one standard normal vector per seed."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)``."""
    assert images.ndim == 4 and images.shape[1] == 3, f"expected (N, 3, H, W), got {tuple(images.shape)}"
    x = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def in_chunks(
    run: Callable[[torch.Tensor], torch.Tensor],  # a batch of inputs -> float images (N, 3, H, W) in [-1, 1]
    inputs: torch.Tensor,  # (N, ...): zs for G, ws for G.synthesis
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """uint8 ``(N, H, W, 3)``: ``run`` over ``inputs`` ``batch_size`` rows at a time, concatenated.

    The one chunked-rendering loop (``generate``, ``synthesize``, so interpolation, the projector
    and the studio): memory is bounded by ``batch_size``, not by N.
    """
    return np.concatenate([to_uint8(run(inputs[i : i + batch_size].to(device)))
                           for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def synthesize(
    G: torch.nn.Module,
    ws: torch.Tensor,  # (N, num_ws, w_dim)
    noise_mode: str = "const",
    batch_size: int = 32,
) -> np.ndarray:
    """uint8 ``(N, R, R, 3)`` images of explicit ws, ``G.synthesis`` over ``batch_size`` at a time."""
    return in_chunks(lambda w: G.synthesis(w, noise_mode=noise_mode), ws, batch_size, _device_of(G, None))


@torch.no_grad()
def generate(
    G: torch.nn.Module,
    seeds: Sequence[int] | str | None = None,
    z: torch.Tensor | np.ndarray | None = None,
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    resolution: int | None = None,  # None = G.img_resolution (the trainer passes the current stage)
    alpha: float = 1.0,  # fade-in of ``resolution`` (the trainer's snapshots during a fade)
) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` for ``seeds`` (or explicit latents ``z``)."""
    if (seeds is None) == (z is None):
        raise ValueError("pass exactly one of seeds or z")
    zs = seeds_to_z(parse_seeds(seeds), G.z_dim) if seeds is not None else torch.as_tensor(z).float()
    assert zs.ndim == 2 and zs.shape[1] == G.z_dim, f"z must be (N, {G.z_dim}), got {tuple(zs.shape)}"
    return in_chunks(
        lambda batch: G(batch, resolution=resolution, alpha=alpha, truncation_psi=truncation_psi,
                        truncation_cutoff=truncation_cutoff, noise_mode=noise_mode),
        zs, batch_size, _device_of(G, device),
    )


def iter_generate(
    G: torch.nn.Module,
    seeds: Sequence[int] | str,
    chunk_size: int = 64,  # images held at once: memory is bounded by this, not by len(seeds)
    **kwargs: object,  # passed to generate (truncation_psi, truncation_cutoff, noise_mode, device)
) -> Iterator[tuple[list[int], np.ndarray]]:
    """``(seeds, uint8 images)`` chunk by chunk, for writers that must not hold every image."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    all_seeds = parse_seeds(seeds)
    for i in range(0, len(all_seeds), chunk_size):
        part = all_seeds[i : i + chunk_size]
        yield part, generate(G, seeds=part, batch_size=min(chunk_size, 32), **kwargs)  # type: ignore[arg-type]


def style_range(styles: StyleRange, num_ws: int) -> range:
    """The style layers ``styles`` names: coarse | middle | fine (the paper's 4-8, 16-32 and
    64+ px), or a ``range`` / ``(start, stop)`` of layer indices. The one place the CLI, the
    studio, the reports and ``mix_styles`` resolve them; ValueError when nothing or too much is
    selected."""
    if isinstance(styles, str):
        from stylegan.training.networks import style_layer_range

        r = style_layer_range(styles, num_ws)
        r = r if isinstance(r, range) else range(*r)
        if len(r) == 0:
            raise ValueError(f"style range {styles!r} selects no layers: this {num_ws}-layer generator "
                             f"has no {styles} styles")
        return r
    r = styles if isinstance(styles, range) else range(*styles)
    if not (0 <= r.start < r.stop <= num_ws):
        raise ValueError(f"style layers must lie in 0-{num_ws - 1} (this generator has {num_ws} style layers), "
                         f"got {r.start}-{r.stop - 1}")
    return r


def parse_styles(text: str, num_ws: int) -> range:
    """coarse | middle | fine, or NVIDIA's inclusive layer range such as ``"0-6"`` (or one layer, ``"3"``):
    the style layers a command line names (``style_range`` of them; ValueError, with a hint, otherwise)."""
    text = text.strip()
    if text in ("coarse", "middle", "fine"):
        try:
            return style_range(text, num_ws)
        except ValueError as exc:
            raise ValueError(f"{exc}; use a layer range such as 0-{num_ws - 1}") from None
    try:
        lo, hi = (int(v) for v in text.split("-", 1)) if "-" in text else (int(text), int(text))
    except ValueError:
        raise ValueError("use coarse, middle, fine or a layer range such as 0-6") from None
    return style_range((lo, hi + 1), num_ws)


def mix_ws(src_ws: torch.Tensor, dst_ws: torch.Tensor, layers: range) -> torch.Tensor:
    """``(n_dst, n_src, num_ws, w_dim)``: each destination's w with ``layers`` taken from each source."""
    mixed = dst_ws[:, None].repeat(1, len(src_ws), 1, 1)
    mixed[:, :, layers.start : layers.stop] = src_ws[None, :, layers.start : layers.stop]
    return mixed


def mixing_figure(m: dict[str, np.ndarray]) -> Image.Image:
    """The classic StyleGAN figure from ``mix_styles``' output: sources across the top,
    destinations down the left, the mixes in between, a blank top-left cell."""
    h, w = m["sources"].shape[1:3]
    tiles = [np.full((1, h, w, 3), 255, np.uint8), m["sources"]]
    for i in range(len(m["destinations"])):
        tiles += [m["destinations"][i : i + 1], m["mixed"][i]]
    return image_grid(np.concatenate(tiles), cols=len(m["sources"]) + 1)


@torch.no_grad()
def mix_styles(
    G: torch.nn.Module,
    source_seeds: Sequence[int],  # across the top: their ``styles`` layers are copied in
    destination_seeds: Sequence[int],  # down the left: everything else comes from them
    styles: StyleRange = "coarse",  # coarse | middle | fine, or (start, stop) layer indices
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Sources, destinations and mixes: ``mixed[i, j]`` = destination i with source j's styles."""
    dev = _device_of(G, device)
    layers = style_range(styles, G.num_ws)
    src, dst = list(source_seeds), list(destination_seeds)
    ws = G.mapping(seeds_to_z(src + dst, G.z_dim).to(dev), truncation_psi=truncation_psi)
    src_ws, dst_ws = ws[: len(src)], ws[len(src) :]
    synth = G.synthesis
    flat = to_uint8(synth(mix_ws(src_ws, dst_ws, layers).flatten(0, 1), noise_mode=noise_mode))
    return {
        "sources": to_uint8(synth(src_ws, noise_mode=noise_mode)),
        "destinations": to_uint8(synth(dst_ws, noise_mode=noise_mode)),
        "mixed": flat.reshape(len(dst), len(src), *flat.shape[1:]),
    }


def style_mixing_grid(
    G: torch.nn.Module,
    source_seeds: Sequence[int],
    destination_seeds: Sequence[int],
    styles: StyleRange = "coarse",
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    device: str | torch.device | None = None,
) -> Image.Image:
    """``mixing_figure`` of ``mix_styles``: destination i's ``styles`` layers replaced by source j's."""
    return mixing_figure(mix_styles(G, source_seeds, destination_seeds, styles, truncation_psi, noise_mode, device))


@torch.no_grad()
def noise_variation(
    G: torch.nn.Module,
    seed: int,
    n: int = 8,
    truncation_psi: float = 1.0,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images with the same w and different noise, and the per-pixel std over them.

    Returns uint8 ``(n, H, W, 3)`` and float32 ``(H, W)`` (std in [0, 1] units, averaged over
    RGB): bright where the noise inputs act (hair-like detail), dark where w alone decides.
    Reproducible: the noise draws are seeded by ``seed`` without touching the global RNG.
    """
    dev = _device_of(G, device)
    ws = G.mapping(seeds_to_z([seed], G.z_dim).to(dev), truncation_psi=truncation_psi)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        imgs = torch.cat([G.synthesis(ws, noise_mode="random") for _ in range(n)])
    std = ((imgs.float() + 1) / 2).clamp(0, 1).std(dim=0).mean(dim=0)
    return to_uint8(imgs), std.cpu().numpy().astype(np.float32)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of (batches of) vectors, along their great circle."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def path_length(keyframes: int, steps: int, loop: bool = False) -> int:
    """Frames of a ``keyframe_path`` through ``keyframes`` keys: ``(K - 1) * steps + 1``, or
    ``K * steps`` with ``loop`` (the first frame is not repeated)."""
    return steps * keyframes if loop else steps * (keyframes - 1) + 1


def keyframe_path(
    keys: torch.Tensor,  # (K, ...) keyframes, K >= 2: zs (K, z_dim), or ws (K, num_ws, w_dim)
    steps: int,  # points per transition
    loop: bool = False,  # also walk from the last keyframe back to the first (a seamless animation)
    space: str = "w",  # "w": lerp (perceptually smooth in W); "z": slerp along the great circle (Z)
) -> torch.Tensor:
    """The points of an animation through ``keys`` in order, ``path_length(K, steps, loop)`` of them:
    ``steps`` per transition at ``t = i / steps``, then the last key (without ``loop``).

    The one interpolation path of the library: ``interpolate`` (so ``pokegan video``, the
    studio's z slerp and the reports' GIF) and ``interpolate_ws`` (the studio's w lerp) walk it.
    """
    if len(keys) < 2 or steps < 1:
        raise ValueError("interpolation needs at least two keyframes and steps >= 1")
    if space not in ("w", "z"):
        raise ValueError(f"space must be 'w' or 'z', got {space!r}")
    mix = slerp if space == "z" else torch.lerp
    keys = torch.cat([keys, keys[:1]]) if loop else keys
    ts = [i / steps for i in range(steps)]
    path = [mix(keys[k : k + 1], keys[k + 1 : k + 2], t) for k in range(len(keys) - 1) for t in ts]
    return torch.cat(path if loop else [*path, keys[-1:]])


@torch.no_grad()
def interpolate(
    G: torch.nn.Module,
    seeds: Sequence[int],
    steps: int = 8,
    space: str = "w",  # "w": lerp in W (perceptually smooth); "z": slerp in Z
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    device: str | torch.device | None = None,
    loop: bool = False,  # also walk from the last seed back to the first (a seamless animation)
    truncation_cutoff: int | None = None,
) -> np.ndarray:
    """uint8 frames ``(path_length(len(seeds), steps, loop), H, W, 3)`` walking through ``seeds`` in order."""
    seeds = parse_seeds(seeds)
    if len(seeds) < 2 or steps < 1:
        raise ValueError("interpolate needs at least two seeds and steps >= 1")
    dev = _device_of(G, device)
    z = seeds_to_z(seeds, G.z_dim).to(dev)
    if space == "z":  # slerp in Z, then map every frame
        ws = G.mapping(keyframe_path(z, steps, loop, "z"), truncation_psi=truncation_psi,
                       truncation_cutoff=truncation_cutoff)
    else:
        ws = keyframe_path(G.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff),
                           steps, loop)
    return synthesize(G, ws, noise_mode=noise_mode)


@torch.no_grad()
def interpolate_ws(
    G: torch.nn.Module,
    ws: torch.Tensor,  # (K, num_ws, w_dim) keyframes, K >= 2 (seeds' ws, projections, ...)
    steps: int = 8,  # frames per transition
    noise_mode: str = "const",
    loop: bool = False,  # also walk from the last keyframe back to the first (a seamless animation)
) -> np.ndarray:
    """uint8 frames lerping in W through ``ws`` in order (the studio's pinned images and projections).

    ``(K - 1) * steps + 1`` frames, or ``K * steps`` with ``loop`` (the first frame is not repeated).
    """
    assert ws.ndim == 3 and ws.shape[1:] == (G.num_ws, G.w_dim), f"ws must be (K, {G.num_ws}, {G.w_dim})"
    return synthesize(G, keyframe_path(ws, steps, loop), noise_mode=noise_mode)


def save_animation(
    frames: np.ndarray | Sequence[np.ndarray],  # uint8 (N, H, W, 3)
    path: str | Path,  # .gif (Pillow) or .mp4 (needs the `video` extra: imageio-ffmpeg)
    fps: float = 24.0,
    scale: int = 1,  # nearest-neighbour upscale (sprites are small; codecs blur tiny frames)
) -> Path:
    """Write frames as a looping GIF or an H.264 MP4, atomically."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) == 0:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) with N >= 1, got {arr.dtype} {arr.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in arr]
        buf = io.BytesIO()
        duration = max(20, round(1000 / fps))  # browsers clamp shorter GIF delays
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
        return atomic_write(path, lambda f: f.write(buf.getvalue()))
    if suffix != ".mp4":
        raise ValueError(f"{path}: the animation format comes from the suffix; use .gif or .mp4")
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ValueError(
            f"{path}: MP4 needs imageio-ffmpeg: pip install 'pokegan[video]' (or write a .gif)"
        ) from None
    # H.264 with yuv420p wants even sides; pad with white rather than let ffmpeg rescale.
    h, w = arr.shape[1:3]
    ph, pw = (16 - h % 16) % 16, (16 - w % 16) % 16
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=255)
    with atomic_path(path, suffix=".mp4") as tmp:  # ffmpeg picks the container by the temp name's suffix
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (arr.shape[2], arr.shape[1]), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=8, macro_block_size=16, ffmpeg_log_level="error",
        )
        writer.send(None)
        for f in arr:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    return path


def image_grid(
    images: np.ndarray | Sequence[np.ndarray],
    cols: int | None = None,  # None = as square as possible
    pad: int = 0,  # pixels of white between tiles
) -> Image.Image:
    """Tile uint8 ``(N, H, W, 3)`` images row by row into one RGB image."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image_grid expects uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    n, h, w, _ = arr.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = arr[i]
    return Image.fromarray(grid)


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write one PNG atomically (a reader never sees a half-written file)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_images(
    images: np.ndarray | Sequence[np.ndarray],
    out_dir: str | Path,
    names: Sequence[str] | None = None,  # file names (".png" added if missing); None = 000000.png, ...
) -> list[Path]:
    """Save uint8 ``(N, H, W, 3)`` images as PNGs, each written atomically."""
    arr = np.asarray(images)
    names = list(names) if names is not None else [f"{i:06d}" for i in range(len(arr))]
    if len(names) != len(arr):
        raise ValueError(f"{len(arr)} images but {len(names)} names")
    out_dir = Path(out_dir)
    files = [out_dir / (n if n.endswith(".png") else f"{n}.png") for n in names]
    return [save_png(img, f) for img, f in zip(arr, files, strict=True)]
