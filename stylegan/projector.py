"""Projection: find the w (or per-layer w+, and optionally the noise maps) that makes G draw a given image.

The optimisation follows NVIDIA's StyleGAN2-ADA projector: start at the average w, Adam
(0.9, 0.999) with a learning rate that ramps up over the first 5% of the steps and down by a
cosine over the last 25%, Gaussian noise added to w (``w_std * 0.05``, fading out quadratically
over the first 75%), and, when the noise maps are optimised, their autocorrelation penalty at
every octave (weight 1e5) with each map renormalised to zero mean and unit variance after each
step. Their perceptual distance is LPIPS on VGG16, whose weights cannot be downloaded here;
ours is the EfficientNet-Lite0 the metrics use (``metrics`` extra): squared distances of
channel-normalised feature maps at four depths, plus a pixel MSE. Without the weights it fits
pixels only, and says so once.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from stylegan.checkpoint import atomic_write

MAX_TARGET_PIXELS = 64_000_000  # a target above this is refused before decoding (a bomb, not a sprite)
PERCEPTUAL_BLOCKS = (0, 2, 4, 10)  # last block of each EfficientNet-Lite0 stage at 1/2, 1/4, 1/8, 1/16 of the input


# --------------------------------------------------------------------------------------------
# Targets


def load_target(
    source: str | Path | bytes,  # an image file, or its bytes (an upload)
    resolution: int,  # the generator's output size
    background: tuple[int, int, int] = (255, 255, 255),  # what transparency is composited onto
    margin: float | None = 0.08,  # crop to the content and pad by this fraction of it (as prepare
    # does for the training set); None = keep the whole picture, padded to a square
) -> np.ndarray:
    """uint8 ``(R, R, 3)``: the picture framed the way the training images were.

    Raises ``ValueError`` for a file that is not a decodable image (or is far too large).
    """
    from stylegan.config import DataConfig
    from stylegan.data.decode import Rejected, to_array
    from stylegan.data.transforms import square

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > MAX_TARGET_PIXELS:
                raise ValueError(f"{im.width}x{im.height} is over {MAX_TARGET_PIXELS:,} pixels")
            im.seek(0)  # an animation: its first frame
            im.load()
            arr = to_array(im)
    except Exception as exc:
        why = "unrecognised format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{name}: not a readable image ({why}); pass a PNG, JPEG, GIF or WebP") from None
    if margin is not None:
        cfg = DataConfig(background=list(background), margin=margin)
        try:
            arr = square(arr, cfg)
        except Rejected as exc:
            raise ValueError(f"{name}: {exc.detail}; nothing to project") from None
    else:
        if arr.shape[2] == 4:
            a = arr[..., 3:4].astype(np.uint16)
            bg = np.asarray(background, np.uint16)
            arr = ((arr[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
        h, w = arr.shape[:2]
        side = max(h, w)
        sq = np.empty((side, side, 3), np.uint8)
        sq[...] = np.asarray(background, np.uint8)
        sq[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = arr
        arr = sq
    if arr.shape[0] != resolution:
        # Box filter when shrinking (exact area averages, as the dataset), nearest when enlarging pixel art.
        resample = Image.Resampling.BOX if arr.shape[0] > resolution else Image.Resampling.NEAREST
        arr = np.asarray(Image.fromarray(arr).resize((resolution, resolution), resample))
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# Perceptual distance on EfficientNet-Lite0 features


class EffnetPerceptual(torch.nn.Module):
    """LPIPS-like distance without learned weights: mean squared difference of unit-normalised
    channel vectors at a few depths of EfficientNet-Lite0, averaged over positions and depths."""

    def __init__(
        self,
        *,
        net: torch.nn.Module | None = None,  # a loaded EfficientNetLite0; None = the packaged weights
        size: int = 128,  # input side; 224 is the network's own, 128 is ~3x cheaper and enough for sprites
    ) -> None:
        super().__init__()
        from stylegan.training.effnet import fold_batchnorm, load_effnet_lite0

        self.net = fold_batchnorm(net if net is not None else load_effnet_lite0()).requires_grad_(False)
        self.size = size

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """float images in [-1, 1] ``(N, 3, H, W)`` -> unit-normalised feature maps."""
        x = (images + 1) * 127.5  # the network's input is (x - 127) / 128 of 0..255 pixels
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - 127.0) / 128.0
        net = self.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        feats = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in PERCEPTUAL_BLOCKS:
                feats.append(x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-8))
            if i >= max(PERCEPTUAL_BLOCKS):
                break
        return feats

    def distance(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
        return sum((a - b).square().sum(dim=1).mean() for a, b in zip(feats_a, feats_b, strict=True)) / len(feats_a)


def load_perceptual(size: int = 128, log: Callable[[str], None] | None = None) -> EffnetPerceptual | None:
    """The perceptual distance, or None (with one line through ``log``) when the weights are missing."""
    from stylegan.training.effnet import MissingWeightsError

    try:
        return EffnetPerceptual(size=size)
    except MissingWeightsError as exc:
        if log is not None:
            log(f"perceptual loss off, fitting pixels only: {str(exc).splitlines()[0]}")
        return None


# --------------------------------------------------------------------------------------------
# The optimisation


@dataclass
class Projection:
    ws: torch.Tensor  # (num_ws, w_dim) on the CPU: the fitted latents (one w repeated, unless w+)
    image: np.ndarray  # uint8 (R, R, 3): G's drawing of ws (with the fitted noise, if any)
    target: np.ndarray  # uint8 (R, R, 3)
    noise: dict[str, torch.Tensor] = field(default_factory=dict)  # fitted noise maps by buffer name
    frames: list[np.ndarray] = field(default_factory=list)  # uint8 drawings during the optimisation
    losses: list[float] = field(default_factory=list)  # total loss per step
    start_error: float = 0.0  # mean |image - target| in 0..255 units at the average w (the starting point)

    @property
    def pixel_error(self) -> float:
        """Mean absolute error of the reconstruction, 0..255 units."""
        return float(np.abs(self.image.astype(np.float64) - self.target.astype(np.float64)).mean())

    @property
    def psnr(self) -> float:
        mse = float(((self.image.astype(np.float64) - self.target.astype(np.float64)) ** 2).mean())
        return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _noise_buffers(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")}


def noise_regularization(maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and octaves (down to 8x8) of the squared one-pixel autocorrelations, as the official projector."""
    reg = torch.zeros(())
    for v in maps:
        noise = v.reshape(1, 1, *v.shape[-2:])
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def pixel_distance(synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE that ignores overshoot where the target is saturated: G may draw white as 1.3, which
    renders as the target's 1.0 (uint8 clamps), so pulling it back to 1.0 would only fight the fit."""
    diff = synth - target
    saturated = ((target >= 1.0) & (synth > 1.0)) | ((target <= -1.0) & (synth < -1.0))
    return torch.where(saturated, torch.zeros_like(diff), diff).square().mean()


def w_stats(G: torch.nn.Module, samples: int = 10_000, seed: int = 123) -> tuple[torch.Tensor, float]:
    """Mean w ``(1, w_dim)`` and the scalar std of w around it, from ``samples`` random z."""
    dev = next(G.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(samples, G.z_dim)).float().to(dev)
    with torch.no_grad():
        w = torch.cat([G.mapping(z[i : i + 4096])[:, 0] for i in range(0, samples, 4096)])
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / samples).sqrt())
    return w_avg, w_std


def project(
    G: torch.nn.Module,
    target: np.ndarray,  # uint8 (R, R, 3) with R = G.img_resolution (see load_target)
    *,
    steps: int = 500,
    w_plus: bool = False,  # one w per style layer (fits more, edits less predictably)
    optimize_noise: bool = False,  # fit the per-layer noise maps too (with the noise regularisation)
    perceptual: EffnetPerceptual | None = None,  # None = pixel loss only
    pixel_weight: float = 1.0,  # MSE on [-1, 1] images
    perceptual_weight: float = 1.0,
    initial_learning_rate: float = 0.1,
    initial_noise_factor: float = 0.05,  # w noise, as a fraction of w's std
    lr_rampdown_length: float = 0.25,
    lr_rampup_length: float = 0.05,
    noise_ramp_length: float = 0.75,
    regularize_noise_weight: float = 1e5,
    w_avg_samples: int = 10_000,
    seed: int = 303,  # the w noise and the initial noise maps (deterministic on CPU)
    num_frames: int = 40,  # drawings kept for the optimisation GIF (evenly spaced; 0 = none)
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
) -> Projection:
    """Fit w (or w+, and noise maps) so that ``G.synthesis`` reproduces ``target``."""
    res = int(G.img_resolution)
    target = np.asarray(target)
    if target.shape != (res, res, 3) or target.dtype != np.uint8:
        raise ValueError(f"target must be uint8 ({res}, {res}, 3) for this generator, got {target.dtype} "
                         f"{target.shape}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dev = next(G.parameters()).device
    G = copy.deepcopy(G).eval().requires_grad_(False)  # the noise maps are optimised in place
    gen = torch.Generator().manual_seed(seed)
    w_avg, w_std = w_stats(G, w_avg_samples)
    num_ws = int(G.num_ws)

    # uint8 u was drawn as x * 127.5 + 128 (sampling.to_uint8): invert exactly that.
    target_t = (torch.from_numpy(target.copy()).permute(2, 0, 1)[None].float().to(dev) - 128) / 127.5
    target_t = target_t.clamp(-1, 1)
    target_feats = perceptual.features(target_t) if perceptual is not None else None

    w_init = w_avg[:, None, :].repeat(1, num_ws if w_plus else 1, 1)
    w_opt = w_init.clone().requires_grad_(True)
    noise_bufs = _noise_buffers(G)
    params = [w_opt]
    if optimize_noise:
        for buf in noise_bufs.values():
            buf.copy_(torch.randn(buf.shape, generator=gen).to(dev))
            buf.requires_grad_(True)
        params += list(noise_bufs.values())
    optimizer = torch.optim.Adam(params, betas=(0.9, 0.999), lr=initial_learning_rate)

    def draw(w: torch.Tensor) -> torch.Tensor:
        return G.synthesis(w.expand(-1, num_ws, -1) if not w_plus else w, noise_mode="const")

    def to_img(x: torch.Tensor) -> np.ndarray:
        return (x.detach()[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    with torch.no_grad():
        start = to_img(draw(w_opt))
    start_error = float(np.abs(start.astype(np.float64) - target.astype(np.float64)).mean())
    frame_steps = set(np.linspace(0, steps - 1, num_frames).round().astype(int).tolist()) if num_frames else set()
    frames: list[np.ndarray] = []
    losses: list[float] = []
    for step in range(steps):
        t = step / steps
        w_noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        lr_ramp = min(1.0, (1.0 - t) / lr_rampdown_length)
        lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
        lr_ramp = lr_ramp * min(1.0, t / lr_rampup_length)
        for group in optimizer.param_groups:
            group["lr"] = initial_learning_rate * lr_ramp

        w_noise = torch.randn(w_opt.shape, generator=gen).to(dev) * w_noise_scale
        synth = draw(w_opt + w_noise)
        loss = pixel_weight * pixel_distance(synth, target_t)
        if perceptual is not None:
            loss = loss + perceptual_weight * perceptual.distance(perceptual.features(synth), target_feats)
        if optimize_noise:
            loss = loss + regularize_noise_weight * noise_regularization(list(noise_bufs.values()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if optimize_noise:
            with torch.no_grad():
                for buf in noise_bufs.values():
                    buf -= buf.mean()
                    buf *= buf.square().mean().rsqrt()
        if step in frame_steps:
            with torch.no_grad():
                frames.append(to_img(draw(w_opt)))
        if log is not None and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(f"step {step + 1:>5d}/{steps}  loss {losses[-1]:.5f}")

    with torch.no_grad():
        ws = w_opt.detach().expand(1, num_ws, -1) if not w_plus else w_opt.detach()
        image = to_img(G.synthesis(ws, noise_mode="const"))
    noise = {k: v.detach().cpu().clone() for k, v in noise_bufs.items()} if optimize_noise else {}
    return Projection(
        ws=ws[0].cpu().clone(), image=image, target=target, noise=noise, frames=frames, losses=losses,
        start_error=start_error,
    )


# --------------------------------------------------------------------------------------------
# Files: projected_w.npz (NVIDIA's name and key: w of shape (1, num_ws, w_dim)), images, GIF


def npz_bytes(ws: torch.Tensor | np.ndarray, noise: dict[str, torch.Tensor] | None = None) -> bytes:
    """``w`` float32 ``(1, num_ws, w_dim)`` (NVIDIA's layout) and any fitted ``noise/<buffer>`` maps."""
    w = np.asarray(ws.detach().cpu() if isinstance(ws, torch.Tensor) else ws, dtype=np.float32)
    if w.ndim == 2:
        w = w[None]
    arrays = {"w": w}
    for name, buf in (noise or {}).items():
        arrays[f"noise/{name}"] = buf.detach().cpu().numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_projection(result: Projection, outdir: str | Path, fps: float = 10.0) -> dict[str, Path]:
    """Write ``projected_w.npz``, ``target.png``, ``proj.png``, ``target_proj.png`` (side by side)
    and ``proj.gif`` (the optimisation, beside the target) into ``outdir``, each atomically."""
    from stylegan.sampling import save_animation, save_png

    out = Path(outdir)
    data = npz_bytes(result.ws, result.noise)
    files = {"w": atomic_write(out / "projected_w.npz", lambda f: f.write(data))}
    files["target"] = save_png(result.target, out / "target.png")
    files["proj"] = save_png(result.image, out / "proj.png")
    files["side_by_side"] = save_png(np.concatenate([result.target, result.image], axis=1), out / "target_proj.png")
    if result.frames:
        frames = np.stack([np.concatenate([result.target, f], axis=1) for f in [*result.frames, result.image]])
        scale = max(1, 128 // result.target.shape[0])  # a 32 px sprite is too small to watch
        files["gif"] = save_animation(frames, out / "proj.gif", fps=fps, scale=scale)
    return files


def load_projected_w(
    path: str | Path, G: torch.nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(N, num_ws, w_dim)`` ws and the noise maps stored by ``save_projection`` (or NVIDIA's
    projector). With ``G``, checks that they fit it (ValueError naming both shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the projected_w.npz that pokegan project wrote")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "w" not in data:
                raise ValueError(f"{path} has no 'w' array (has {sorted(data.files)})")
            ws = torch.from_numpy(np.asarray(data["w"], dtype=np.float32))
            noise = {k[len("noise/") :]: torch.from_numpy(np.asarray(data[k], np.float32))
                     for k in data.files if k.startswith("noise/")}
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    if ws.ndim == 2:
        ws = ws[None]
    if G is not None:
        if ws.ndim != 3 or ws.shape[1:] != (G.num_ws, G.w_dim):
            raise ValueError(
                f"{path}: w has shape {tuple(ws.shape)}, but this generator takes (N, {G.num_ws}, {G.w_dim}); "
                "project with the same model"
            )
        known = _noise_buffers(G)
        for k, v in noise.items():
            if k not in known or known[k].shape != v.shape:
                raise ValueError(f"{path}: noise map {k} {tuple(v.shape)} does not fit this generator")
    return ws, noise


@torch.no_grad()
def render_ws(
    G: torch.nn.Module,
    ws: torch.Tensor,  # (N, num_ws, w_dim)
    noise: dict[str, torch.Tensor] | None = None,  # fitted noise maps: drawn with these instead of G's
    noise_mode: str = "const",
) -> np.ndarray:
    """uint8 ``(N, R, R, 3)`` images of explicit ws (a projection, a studio edit)."""
    from stylegan.sampling import synthesize

    if noise:
        dev = next(G.parameters()).device
        G = copy.deepcopy(G)
        bufs = _noise_buffers(G)
        for k, v in noise.items():
            bufs[k].copy_(v.to(dev))
        noise_mode = "const"
    return synthesize(G, ws, noise_mode=noise_mode)
