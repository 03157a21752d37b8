"""Sliced Wasserstein distance (Progressive GAN's definition) on synthetic 32x32 images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from stylegan.metrics.swd import laplacian_pyramid, pyr_up, swd


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared, oversubscribed CPU one thread per test process is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int, seed: int, res: int = 32) -> np.ndarray:
    """uint8 (n, 3, res, res): 1-3 coloured ellipses on white, like sprites on their background."""
    rng = np.random.RandomState(seed)
    yy, xx = (np.mgrid[0:res, 0:res] + 0.5) / res
    out = np.full((n, res, res, 3), 255.0)
    for i in range(n):
        for _ in range(rng.randint(1, 4)):
            cy, cx = rng.uniform(0.25, 0.75, 2)
            ry, rx = rng.uniform(0.08, 0.25, 2)
            out[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 255, 3)
    return np.ascontiguousarray(out.astype(np.uint8).transpose(0, 3, 1, 2))


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of uint8 NCHW images (sigma 0 = unchanged)."""
    if sigma == 0:
        return images
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = torch.nn.functional.pad(torch.from_numpy(images).float(), (r, r, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    return {"real": blobs(64, 0), "fresh": blobs(64, 1)}


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    x = torch.from_numpy(blobs(4, 3)).float()
    levels = laplacian_pyramid(x, 3)
    assert [lvl.shape[-1] for lvl in levels] == [32, 16, 8]
    rec = levels[-1]
    for band in reversed(levels[:-1]):
        rec = band + pyr_up(rec)
    torch.testing.assert_close(rec, x, atol=1e-3, rtol=0)


def test_swd_levels_identity_and_determinism(sets: dict[str, np.ndarray]) -> None:
    same = swd(sets["real"], sets["real"], seed=0)
    assert set(same) == {"swd_32", "swd_16", "swd"}
    assert same["swd"] == pytest.approx((same["swd_32"] + same["swd_16"]) / 2)
    fresh = swd(sets["real"], sets["fresh"], seed=0)
    # Identical sets differ only by which patches were drawn: smaller than a fresh draw of the distribution.
    assert 0 < same["swd"] < fresh["swd"]
    nhwc = swd(sets["real"].transpose(0, 2, 3, 1), sets["fresh"].transpose(0, 2, 3, 1), seed=0)
    assert nhwc == fresh  # seeded, and (N, H, W, 3) as sampling returns it is accepted too


def test_swd_grows_monotonically_with_blur(sets: dict[str, np.ndarray]) -> None:
    values = [swd(sets["real"], blur(sets["fresh"], s), seed=0)["swd"] for s in (0.0, 0.6, 1.2)]
    assert values == sorted(values) and values[-1] > 1.5 * values[0]


def test_swd_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        swd(blobs(4, 0, res=8), blobs(4, 1, res=8))
    with pytest.raises(ValueError, match="one size"):
        swd(blobs(4, 0, res=32), blobs(4, 1, res=16))
