from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.config import ModelConfig
from stylegan.networks import Generator
from stylegan.sampling import (
    generate,
    image_grid,
    interpolate,
    mix_styles,
    noise_variation,
    parse_seeds,
    save_images,
    seeds_to_z,
    style_mixing_grid,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Tiny models run fastest single-threaded (and far faster on a shared, busy machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G() -> Generator:
    torch.manual_seed(0)
    cfg = ModelConfig(z_dim=16, w_dim=16, mapping_layers=2, fmap_base=32, fmap_max=16, max_resolution=16)
    G = Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # make noise strengths and w_avg non-trivial, as after training
        for name, p in G.named_parameters():
            if "noise" in name:
                p.fill_(0.5)
        G.mapping.w_avg.normal_()
    return G


def test_parse_seeds() -> None:
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds(" 5 , 9-10 ") == [5, 9, 10]
    assert parse_seeds(4) == [4] and parse_seeds([1, 2]) == [1, 2]
    for bad in ("", "a-b", "3-1", "-5", "1,,x"):
        with pytest.raises(ValueError, match="seed"):
            parse_seeds(bad)


def test_generate_is_deterministic_per_seed(G: Generator) -> None:
    a = generate(G, seeds="0-3")
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(generate(G, seeds="0-3"), a)
    # A seed's image does not depend on its batch mates (up to float rounding).
    assert np.abs(generate(G, seeds=[2, 3]).astype(int) - a[2:]).max() <= 1
    assert np.abs(generate(G, seeds=[0, 1, 2, 3], batch_size=3).astype(int) - a).max() <= 1
    assert not np.array_equal(a[0], a[1])
    # z follows the reference convention, so seeds mean the same across tools.
    assert np.allclose(seeds_to_z([5], 16)[0].numpy(), np.random.RandomState(5).randn(16).astype(np.float32))
    assert np.array_equal(generate(G, z=seeds_to_z([1], 16)), a[1:2])
    assert generate(G, seeds=[0], resolution=8).shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="exactly one"):
        generate(G)


def test_truncation_psi_zero_gives_the_same_image_for_every_seed(G: Generator) -> None:
    imgs = generate(G, seeds=range(5), truncation_psi=0.0)
    assert all(np.array_equal(imgs[0], x) for x in imgs[1:])
    spread = [generate(G, seeds=range(5), truncation_psi=psi).astype(float).std(axis=0).mean() for psi in (0.5, 1.0)]
    assert 0 < spread[0] < spread[1]  # truncation pulls samples together


def test_noise_modes(G: Generator) -> None:
    const = generate(G, seeds=[0], noise_mode="const")
    assert np.array_equal(const, generate(G, seeds=[0], noise_mode="const"))
    assert not np.array_equal(generate(G, seeds=[0], noise_mode="none"), const)


def test_style_mixing_grid_cells_differ_from_both_parents(G: Generator) -> None:
    rows, cols = [1, 2, 3], [10, 11]
    m = mix_styles(G, rows, cols, styles="coarse")
    assert m["mixed"].shape == (2, 3, 16, 16, 3)
    # The parents are the plain samples of their seeds (up to float rounding of a different batch).
    assert np.abs(m["sources"].astype(int) - generate(G, seeds=rows)).max() <= 1
    assert np.abs(m["destinations"].astype(int) - generate(G, seeds=cols)).max() <= 1
    for i in range(len(cols)):
        for j in range(len(rows)):
            cell = m["mixed"][i, j].astype(int)
            assert np.abs(cell - m["destinations"][i]).mean() > 0.5
            assert np.abs(cell - m["sources"][j]).mean() > 0.5
    # Taking every layer from the source reproduces the source.
    full = mix_styles(G, rows, cols, styles=(0, G.num_ws))
    assert np.array_equal(full["mixed"][0], full["sources"])
    grid = style_mixing_grid(G, rows, cols, styles="middle")
    assert grid.size == (16 * 4, 16 * 3)
    top_left = np.asarray(grid)[:16, :16]
    assert (top_left == 255).all()  # blank corner
    assert np.array_equal(np.asarray(grid)[:16, 16:32], m["sources"][0])  # sources across the top
    assert np.array_equal(np.asarray(grid)[16:32, :16], m["destinations"][0])  # destinations down the left
    with pytest.raises(ValueError, match="selects no layers"):
        mix_styles(G, rows, cols, styles="fine")  # a 16x16 generator has no fine styles


def test_noise_variation(G: Generator) -> None:
    imgs, std = noise_variation(G, seed=3, n=4)
    assert imgs.shape == (4, 16, 16, 3) and std.shape == (16, 16) and std.dtype == np.float32
    assert not np.array_equal(imgs[0], imgs[1]) and std.max() > 0
    again, std2 = noise_variation(G, seed=3, n=4)
    assert np.array_equal(imgs, again) and np.array_equal(std, std2)  # reproducible per seed
    state = torch.get_rng_state()
    noise_variation(G, seed=4, n=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


@pytest.mark.parametrize("space", ["w", "z"])
def test_interpolate_hits_the_endpoints(G: Generator, space: str) -> None:
    frames = interpolate(G, [0, 5, 9], steps=4, space=space)
    assert frames.shape == (9, 16, 16, 3)
    ends = generate(G, seeds=[0, 5, 9])
    assert np.abs(frames[0].astype(int) - ends[0]).max() <= 1
    assert np.abs(frames[4].astype(int) - ends[1]).max() <= 1
    assert np.abs(frames[8].astype(int) - ends[2]).max() <= 1
    # Neighbouring frames are closer than the endpoints.
    step = np.abs(frames[1].astype(int) - frames[0]).mean()
    assert step < np.abs(ends[1].astype(int) - ends[0]).mean()
    with pytest.raises(ValueError):
        interpolate(G, [0], steps=4)


def test_image_grid_and_save_images(tmp_path: Path) -> None:
    imgs = np.stack([np.full((4, 6, 3), i * 40, np.uint8) for i in range(5)])
    grid = image_grid(imgs, cols=3, pad=1)
    assert grid.size == (3 * 6 + 2, 2 * 4 + 1)
    arr = np.asarray(grid)
    assert (arr[5:9, 7:13] == 160).all() and (arr[5:9, 14:20] == 255).all()  # tile 4, then blank
    assert image_grid(imgs).size == (3 * 6, 2 * 4)
    with pytest.raises(ValueError, match="uint8"):
        image_grid(imgs.astype(np.float32))
    paths = save_images(imgs[:2], tmp_path / "out", names=["a", "b.png"])
    assert [p.name for p in paths] == ["a.png", "b.png"]
    assert np.array_equal(np.asarray(Image.open(paths[1])), imgs[1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]  # no temp files
    with pytest.raises(ValueError, match="names"):
        save_images(imgs, tmp_path / "x", names=["only-one"])
