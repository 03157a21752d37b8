"""Sliced Wasserstein distance on Laplacian-pyramid patches, as Progressive GAN defines it.

Karras et al. 2018, appendix D: a Laplacian pyramid (5x5 binomial kernel, mirror borders)
from full resolution down to 16x16; 128 random 7x7 neighbourhoods per image and level; the
descriptors of each set normalised per colour channel (mean and std over the whole set);
4 repeats x 128 random unit directions; sorted projections compared by mean absolute
difference; x1e3. Reported per level (keyed by the level's resolution) and averaged.

Vectorized in torch and seeded: the same inputs and seed give the same numbers. ``device``
runs the pyramids, descriptors, projections and sorts there (an evaluation on a GPU is not
held up by its host); patch positions and directions are drawn on the CPU from the same
seeded generators whatever the device, so every device compares the same patches along the
same directions. The CPU sorts in numpy; elsewhere torch sorts, in full fp32 (no TF32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from stylegan.metrics.stats import seeded_rows

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
_KERNEL = (torch.outer(_BINOMIAL, _BINOMIAL) / 256.0).float()  # 5x5, sums to 1


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Depthwise 5x5 binomial filter with mirror borders (scipy 'mirror' = torch 'reflect')."""
    c = x.shape[1]
    k = (_KERNEL * gain).to(x).view(1, 1, 5, 5).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=4.0)


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Float images -> [band-pass at R, R/2, ..., low-pass at R / 2**(num_levels-1)]."""
    pyramid = [images]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def patch_positions(
    n: int, h: int, w: int, patches_per_image: int, patch_size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (rows, columns), each (N, P), of random neighbourhoods inside (h, w).

    ProGAN draws centres in [H, S - H) for H = patch_size // 2; corners in [0, S - patch_size]
    are the same set. A module-level function, so tests can inject the positions.
    """
    ys = torch.randint(0, h - patch_size + 1, (n, patches_per_image), generator=gen)
    xs = torch.randint(0, w - patch_size + 1, (n, patches_per_image), generator=gen)
    return ys, xs


def gather_patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The ``patch_size``^2 neighbourhoods with corners (ys, xs) (N, P) -> (N * P, C, p, p), image-major.

    Each patch is laid out (C, x, y), transposed, exactly as ProGAN's ``np.ogrid`` indexing
    builds it: a fixed permutation of the components changes nothing in distribution (the
    directions are isotropic), but it makes the descriptors equal ProGAN's element by element.
    """
    n, c = level.shape[:2]
    dev = level.device
    offs = torch.arange(patch_size, device=dev)
    rows = (ys.to(dev)[..., None] + offs)[..., :, None]  # (N, P, p, 1)
    cols = (xs.to(dev)[..., None] + offs)[..., None, :]  # (N, P, 1, p)
    img = torch.arange(n, device=dev)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[img, rows, cols]  # (N, P, y, x, C)
    return patches.permute(0, 1, 4, 3, 2).reshape(-1, c, patch_size, patch_size)


def _patch_descriptors(
    level: torch.Tensor, patches_per_image: int, patch_size: int, gen: torch.Generator
) -> torch.Tensor:
    """Random ``patch_size``^2 neighbourhoods -> (N * patches_per_image, C, p, p)."""
    n, _, h, w = level.shape
    ys, xs = patch_positions(n, h, w, patches_per_image, patch_size, gen)
    return gather_patches(level, ys, xs, patch_size)


def _normalize(desc: torch.Tensor) -> torch.Tensor:
    """Per colour channel: zero mean, unit std over every descriptor of the set; then flatten."""
    mean = desc.mean(dim=(0, 2, 3), keepdim=True)
    std = desc.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-8)  # np.std, as ProGAN's code
    return ((desc - mean) / std).reshape(desc.shape[0], -1)


def random_directions(dim: int, count: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``count`` random unit directions as columns (dim, count), on the CPU; module-level so tests can inject them."""
    dirs = torch.randn(dim, count, generator=gen, dtype=dtype)
    return dirs / dirs.norm(dim=0, keepdim=True)


def _sorts_on_host(a: torch.Tensor) -> bool:
    """CPU descriptors sort in numpy (the CPU figures are pinned to that path); others with torch, on their device."""
    return a.device.type == "cpu"


def sliced_distance(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
    """Mean |sorted(a @ dirs) - sorted(b @ dirs)| over descriptors and directions (one repeat)."""
    assert a.shape == b.shape, f"descriptor sets must match, got {tuple(a.shape)} and {tuple(b.shape)}"
    if not _sorts_on_host(a):
        return sliced_distance_torch(a, b, dirs)
    # Sort (dirs, N) rows in place with numpy: 3-5x faster than torch.sort on CPU here.
    proj_a = np.ascontiguousarray((a @ dirs).T.numpy())
    proj_b = np.ascontiguousarray((b @ dirs).T.numpy())
    proj_a.sort(axis=1)
    proj_b.sort(axis=1)
    return float(np.abs(proj_a - proj_b).mean(dtype=np.float64))


def sliced_distance_torch(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
    """``sliced_distance`` on a's device with torch: the same sorted projections, the mean
    summed in another order (float64 either way: agrees to ~1e-12 relative)."""
    dirs = dirs.to(a.device)
    proj_a = torch.sort((a @ dirs).T, dim=1).values
    proj_b = torch.sort((b @ dirs).T, dim=1).values
    return float((proj_a - proj_b).abs_().mean(dtype=torch.float64))


@contextlib.contextmanager
def _full_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 in the CUDA convolutions (on by default) and matmuls: it would round the
    pyramid and the projections to ~1e-3 relative, a figure no longer the CPU's."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, dir_repeats: int, dirs_per_repeat: int, gen: torch.Generator
) -> float:
    """Mean over repeats of ``sliced_distance`` with fresh random directions (equal counts)."""
    return float(np.mean([sliced_distance(a, b, random_directions(a.shape[1], dirs_per_repeat, gen, a.dtype))
                          for _ in range(dir_repeats)]))


def _as_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.ndim != 4 or 3 not in (t.shape[1], t.shape[-1]):
        raise ValueError(f"SWD needs images (N, 3, H, W) or (N, H, W, 3), got {tuple(t.shape)}")
    if t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    return t


def swd(
    real: np.ndarray | torch.Tensor,  # uint8 images (N, 3, R, R) or (N, R, R, 3)
    fake: np.ndarray | torch.Tensor,  # same resolution; the larger set is subsampled (seeded) to the smaller's size
    *,
    min_resolution: int = 16,  # coarsest pyramid level
    patches_per_image: int = 128,
    patch_size: int = 7,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    seed: int = 0,
    batch_size: int = 256,  # images per pyramid pass (bounds memory)
    device: str | torch.device | None = None,  # where pyramids, descriptors and sorts run; None = CPU
) -> dict[str, float]:
    """``{"swd_<R>": ..., ..., "swd": mean over levels}``, each x1e3 as in the paper."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    real_t, fake_t = _as_nchw(real), _as_nchw(fake)  # uint8 kept: batches become float where they run
    res = real_t.shape[-1]
    if fake_t.shape[1:] != real_t.shape[1:] or real_t.shape[-2] != res:
        raise ValueError(f"SWD needs square images of one size, got {tuple(real_t.shape)} and {tuple(fake_t.shape)}")
    if res < min_resolution or res < patch_size:
        raise ValueError(f"SWD needs images of at least {max(min_resolution, patch_size)} px, got {res}")
    n = min(len(real_t), len(fake_t))
    if n < 2:
        raise ValueError(f"SWD needs at least 2 images per set, got {len(real_t)} real and {len(fake_t)} fake")
    # The larger set is cut to n by a seeded random draw, never to its first n rows: a packed
    # dataset is in file order (front / back / shiny sprites in runs), so its head is no sample.
    real_t = real_t[torch.from_numpy(seeded_rows(len(real_t), n, seed))]
    fake_t = fake_t[torch.from_numpy(seeded_rows(len(fake_t), n, seed))]
    num_levels = int(np.log2(res // min_resolution)) + 1
    resolutions = [res >> i for i in range(num_levels)]
    out: dict[str, float] = {}
    with _full_fp32(dev):
        # Independent patch positions for each set (as the paper's code draws them), shared directions.
        descs: list[list[torch.Tensor]] = []
        for set_index, images in enumerate((real_t, fake_t)):
            gen = torch.Generator().manual_seed(seed * 2 + set_index)
            per_level: list[list[torch.Tensor]] = [[] for _ in resolutions]
            for i in range(0, n, batch_size):
                # Float per batch, where it runs (a device is sent a quarter of the bytes): the same
                # values and strides as the whole-set .float() this once did, so the CPU figures stand.
                batch = images[i : i + batch_size].to(dev).float()
                for lvl, band in enumerate(laplacian_pyramid(batch, num_levels)):
                    per_level[lvl].append(_patch_descriptors(band, patches_per_image, patch_size, gen))
            descs.append([_normalize(torch.cat(d)) for d in per_level])
        gen = torch.Generator().manual_seed(seed * 2 + 1_000_003)
        for lvl, r in enumerate(resolutions):
            out[f"swd_{r}"] = 1e3 * sliced_wasserstein(descs[0][lvl], descs[1][lvl], dir_repeats, dirs_per_repeat, gen)
    out["swd"] = float(np.mean([out[f"swd_{r}"] for r in resolutions]))
    return out
