"""Sliced Wasserstein distance (Progressive GAN's definition) on synthetic 32x32 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylegan.metrics import swd as swd_module
from stylegan.metrics.swd import gather_patches, laplacian_pyramid, pyr_up, sliced_distance, swd
from tests.helpers import blob_images, blur


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    return {"real": blob_images(64, 0), "fresh": blob_images(64, 1)}


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    x = torch.from_numpy(blob_images(4, 3)).float()
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
        swd(blob_images(4, 0, res=8), blob_images(4, 1, res=8))
    with pytest.raises(ValueError, match="one size"):
        swd(blob_images(4, 0, res=32), blob_images(4, 1, res=16))


def test_swd_subsamples_the_larger_set_at_random_not_its_head() -> None:
    # A packed dataset is in file order: here 48 sharp sprites, then 48 blurred ones. Fakes are
    # an even mix of both. Comparing the fakes with the head of the reals (all sharp) would
    # report a distance the model does not have.
    real = np.concatenate([blob_images(48, 0), blur(blob_images(48, 2), 1.5)])
    fake = np.concatenate([blob_images(24, 1), blur(blob_images(24, 3), 1.5)])
    mixed = swd(real, fake, seed=0)["swd"]
    head_only = swd(real[:48], fake, seed=0)["swd"]  # what taking the first len(fake) reals measures
    assert mixed < 0.75 * head_only, f"{mixed:.1f} vs head-only {head_only:.1f}"
    # The draw is seeded: the same call gives the same numbers.
    assert swd(real, fake, seed=0)["swd"] == mixed


def test_descriptor_normalisation_matches_progan_finalize_descriptors() -> None:
    from stylegan.metrics.swd import _normalize

    desc = np.random.RandomState(0).rand(5, 3, 7, 7).astype(np.float64) * 255
    # Progressive GAN's sliced_wasserstein.finalize_descriptors, verbatim in numpy.
    ref = desc - np.mean(desc, axis=(0, 2, 3), keepdims=True)
    ref /= np.std(desc, axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(_normalize(torch.from_numpy(desc)).numpy(), ref.reshape(5, -1), rtol=1e-10)


# --- An independent NumPy transcription of Progressive GAN's metrics/sliced_wasserstein.py ---
# (Karras et al. 2018). scipy.ndimage.convolve(mode="mirror") is written out as a direct 5x5
# sum over numpy "reflect" padding (the same border rule); random draws come from `rs`.

_PG_KERNEL = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6], [4, 16, 24, 16, 4],
                         [1, 4, 6, 4, 1]]) / 256.0


def _pg_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    out = np.zeros_like(x)
    for dy in range(5):
        for dx in range(5):
            out += kernel[dy, dx] * padded[:, :, dy : dy + h, dx : dx + w]
    return out


def _pg_pyr_down(x: np.ndarray) -> np.ndarray:
    return _pg_convolve(x, _PG_KERNEL)[:, :, ::2, ::2]


def _pg_pyr_up(x: np.ndarray) -> np.ndarray:
    s = x.shape
    res = np.zeros((s[0], s[1], s[2] * 2, s[3] * 2), x.dtype)
    res[:, :, ::2, ::2] = x
    return _pg_convolve(res, _PG_KERNEL * 4.0)


def _pg_laplacian_pyramid(minibatch: np.ndarray, num_levels: int) -> list[np.ndarray]:
    pyramid = [np.float32(minibatch)]
    for _ in range(1, num_levels):
        pyramid.append(_pg_pyr_down(pyramid[-1]))
        pyramid[-2] -= _pg_pyr_up(pyramid[-1])
    return pyramid


def _pg_descriptors(minibatch: np.ndarray, nhood_size: int, nhoods_per_image: int,
                    rs: np.random.RandomState) -> np.ndarray:
    s = minibatch.shape
    n = nhoods_per_image * s[0]
    h = nhood_size // 2
    nhood, chan, x, y = np.ogrid[0:n, 0:3, -h : h + 1, -h : h + 1]
    img = nhood // nhoods_per_image
    x = x + rs.randint(h, s[3] - h, size=(n, 1, 1, 1))
    y = y + rs.randint(h, s[2] - h, size=(n, 1, 1, 1))
    idx = ((img * s[1] + chan) * s[2] + y) * s[3] + x
    return minibatch.flat[idx]


def _pg_finalize(desc: np.ndarray) -> np.ndarray:
    desc = desc - np.mean(desc, axis=(0, 2, 3), keepdims=True)
    desc /= np.std(desc, axis=(0, 2, 3), keepdims=True)
    return desc.reshape(desc.shape[0], -1)


def _pg_directions(dim: int, count: int, rs: np.random.RandomState) -> np.ndarray:
    dirs = rs.randn(dim, count)
    dirs /= np.sqrt(np.sum(np.square(dirs), axis=0, keepdims=True))
    return dirs.astype(np.float32)


def _pg_sliced_wasserstein(a: np.ndarray, b: np.ndarray, dirs: list[np.ndarray]) -> float:
    results = []
    for d in dirs:
        proj_a, proj_b = np.sort(np.matmul(a, d), axis=0), np.sort(np.matmul(b, d), axis=0)
        results.append(np.mean(np.abs(proj_a - proj_b)))
    return float(np.mean(results))


def _pg_swd(reals: np.ndarray, fakes: np.ndarray, min_res: int, nhoods: int, nhood_size: int, dir_repeats: int,
            dirs_per_repeat: int, rs: np.random.RandomState) -> list[float]:
    """Progressive GAN's API.end(): per-level SWD x1e3, then their mean (one minibatch per set)."""
    levels = int(np.log2(reals.shape[-1] // min_res)) + 1
    desc = [[_pg_finalize(_pg_descriptors(lvl, nhood_size, nhoods, rs)) for lvl in _pg_laplacian_pyramid(x, levels)]
            for x in (reals, fakes)]
    dist = [1e3 * _pg_sliced_wasserstein(dr, df, [_pg_directions(dr.shape[1], dirs_per_repeat, rs)
                                                   for _ in range(dir_repeats)])
            for dr, df in zip(desc[0], desc[1], strict=True)]
    return [*dist, float(np.mean(dist))]


def test_pyramid_matches_progan_reference() -> None:
    x = blob_images(3, 5).astype(np.float32)
    ours = laplacian_pyramid(torch.from_numpy(x), 3)
    ref = _pg_laplacian_pyramid(x, 3)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=2e-3, rtol=0)  # pixels in 0..255: float32 rounding only


def test_patch_gather_matches_progan_flat_indexing() -> None:
    level = torch.from_numpy(np.random.RandomState(1).rand(3, 3, 12, 10).astype(np.float32))
    rs = np.random.RandomState(2)
    ref = _pg_descriptors(level.numpy(), 5, 4, rs)
    rs = np.random.RandomState(2)  # replay ProGAN's draws: centres x, then y, in [2, S - 2)
    xs = rs.randint(2, 10 - 2, size=12).reshape(3, 4) - 2
    ys = rs.randint(2, 12 - 2, size=12).reshape(3, 4) - 2
    ours = gather_patches(level, torch.from_numpy(ys), torch.from_numpy(xs), 5)
    np.testing.assert_array_equal(ours.numpy(), ref)


def test_sliced_distance_matches_progan_for_fixed_directions() -> None:
    rs = np.random.RandomState(3)
    a, b = rs.randn(200, 147).astype(np.float32), (rs.randn(200, 147) * 1.3 + 0.2).astype(np.float32)
    dirs = _pg_directions(147, 16, rs)
    ours = sliced_distance(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(dirs))
    assert ours == pytest.approx(_pg_sliced_wasserstein(a, b, [dirs]), rel=1e-5)


def test_swd_equals_progan_reference_given_the_same_random_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    # Patch positions and directions are injected from one numpy RandomState, consumed in
    # ProGAN's order (reals then fakes; per level: x centres, y centres; then per level and
    # repeat: directions); everything else is the library's own code.
    real, fake = blob_images(6, 0), blur(blob_images(6, 1), 0.8)
    rs = np.random.RandomState(4)

    def positions(n: int, h: int, w: int, p: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        half = size // 2
        xs = rs.randint(half, w - half, size=n * p).reshape(n, p) - half
        ys = rs.randint(half, h - half, size=n * p).reshape(n, p) - half
        return torch.from_numpy(ys), torch.from_numpy(xs)

    def directions(dim: int, count: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(_pg_directions(dim, count, rs)).to(dtype)

    monkeypatch.setattr(swd_module, "patch_positions", positions)
    monkeypatch.setattr(swd_module, "random_directions", directions)
    ours = swd(real, fake, patches_per_image=16, dir_repeats=2, dirs_per_repeat=32)
    rs = np.random.RandomState(4)
    ref = _pg_swd(real, fake, 16, 16, 7, 2, 32, rs)
    np.testing.assert_allclose([ours["swd_32"], ours["swd_16"], ours["swd"]], ref, rtol=1e-4)


# --- The device (torch) path, and the CPU path it must leave alone ---


def _old_sliced_distance(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
    """sliced_distance before the device path (frozen, to compare bits)."""
    proj_a = np.ascontiguousarray((a @ dirs).T.numpy())
    proj_b = np.ascontiguousarray((b @ dirs).T.numpy())
    proj_a.sort(axis=1)
    proj_b.sort(axis=1)
    return float(np.abs(proj_a - proj_b).mean(dtype=np.float64))


def _old_swd(real: np.ndarray, fake: np.ndarray, seed: int, batch_size: int = 256) -> dict[str, float]:
    """swd before the device option (frozen, NCHW uint8 input, default sizes), on the unchanged helpers."""
    sets = [torch.from_numpy(x).float() for x in (real, fake)]
    n, res = min(len(real), len(fake)), real.shape[-1]
    sets = [t[torch.from_numpy(swd_module.seeded_rows(len(t), n, seed))] for t in sets]
    num_levels = int(np.log2(res // 16)) + 1
    descs = []
    for set_index, images in enumerate(sets):
        gen = torch.Generator().manual_seed(seed * 2 + set_index)
        per_level: list[list[torch.Tensor]] = [[] for _ in range(num_levels)]
        for i in range(0, n, batch_size):
            for lvl, band in enumerate(laplacian_pyramid(images[i : i + batch_size], num_levels)):
                ys, xs = swd_module.patch_positions(band.shape[0], band.shape[2], band.shape[3], 128, 7, gen)
                offs = torch.arange(7)
                rows, cols = (ys[..., None] + offs)[..., :, None], (xs[..., None] + offs)[..., None, :]
                patches = band.permute(0, 2, 3, 1)[torch.arange(band.shape[0])[:, None, None, None], rows, cols]
                per_level[lvl].append(patches.permute(0, 1, 4, 3, 2).reshape(-1, 3, 7, 7))
        descs.append([swd_module._normalize(torch.cat(d)) for d in per_level])
    gen = torch.Generator().manual_seed(seed * 2 + 1_000_003)
    out = {}
    for lvl in range(num_levels):
        a, b = descs[0][lvl], descs[1][lvl]
        dists = [
            _old_sliced_distance(a, b, swd_module.random_directions(a.shape[1], 128, gen, a.dtype)) for _ in range(4)
        ]
        out[f"swd_{res >> lvl}"] = 1e3 * float(np.mean(dists))
    out["swd"] = float(np.mean([out[f"swd_{res >> lvl}"] for lvl in range(num_levels)]))
    return out


def test_cpu_swd_keeps_the_figures_of_the_numpy_path(
    sets: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_torch_sort(*args: object) -> float:
        raise AssertionError("the CPU path sorts in numpy")

    monkeypatch.setattr(swd_module, "sliced_distance_torch", no_torch_sort)
    fake = blur(sets["fresh"], 0.6)
    old = _old_swd(sets["real"], fake, seed=1, batch_size=24)
    assert swd(sets["real"], fake, seed=1, batch_size=24) == old  # the same floats, not just close
    assert swd(sets["real"], fake, seed=1, batch_size=24, device="cpu") == old
    assert swd(sets["real"].transpose(0, 2, 3, 1), fake.transpose(0, 2, 3, 1), seed=1, batch_size=24) == old


def test_torch_sliced_distance_agrees_with_the_numpy_one(sets: dict[str, np.ndarray]) -> None:
    gen = torch.Generator().manual_seed(0)
    bands = [laplacian_pyramid(torch.from_numpy(x).float(), 2) for x in (sets["real"], blur(sets["fresh"], 0.6))]
    for lvl in range(2):
        a, b = (swd_module._normalize(swd_module._patch_descriptors(p[lvl], 64, 7, gen)) for p in bands)
        dirs = swd_module.random_directions(a.shape[1], 128, gen, a.dtype)
        ours = swd_module.sliced_distance_torch(a, b, dirs)
        assert ours == pytest.approx(sliced_distance(a, b, dirs), rel=1e-9, abs=0), lvl


def test_swd_device_path_draws_the_same_patches_and_directions_and_agrees(
    sets: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The path a GPU takes (uint8 batches moved to the device, torch sorts), run on the CPU.
    drawn: list[torch.Tensor] = []
    real_directions = swd_module.random_directions

    def directions(dim: int, count: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        drawn.append(real_directions(dim, count, gen, dtype))
        return drawn[-1]

    monkeypatch.setattr(swd_module, "random_directions", directions)
    fake = blur(sets["fresh"], 0.6)
    host = swd(sets["real"], fake, seed=2, batch_size=24)
    host_dirs, drawn[:] = list(drawn), []
    torch_sorts: list[torch.device] = []
    real_torch = swd_module.sliced_distance_torch

    def spy(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> float:
        torch_sorts.append(a.device)
        return real_torch(a, b, dirs)

    monkeypatch.setattr(swd_module, "_sorts_on_host", lambda a: False)
    monkeypatch.setattr(swd_module, "sliced_distance_torch", spy)
    dev = swd(sets["real"], fake, seed=2, batch_size=24, device="cpu")
    assert len(torch_sorts) == 2 * 4  # every level and repeat sorted by torch
    assert len(drawn) == len(host_dirs) and all(torch.equal(a, b) for a, b in zip(drawn, host_dirs, strict=True))
    assert dev.keys() == host.keys()
    for k in host:
        assert dev[k] == pytest.approx(host[k], rel=1e-9, abs=0), k
