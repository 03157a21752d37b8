from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan import sampling
from stylegan.sampling import (
    generate,
    image_grid,
    in_chunks,
    interpolate,
    interpolate_ws,
    keyframe_path,
    mix_styles,
    noise_variation,
    parse_seeds,
    path_length,
    save_images,
    seeds_to_z,
    slerp,
    style_mixing_grid,
    synthesize,
    to_uint8,
)
from stylegan.training.networks import Generator
from tests.helpers import tiny_generator


@pytest.fixture(scope="module")
def G() -> Generator:
    return tiny_generator(16, fmap_base=32)  # non-trivial noise strengths and w_avg, as after training


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


@pytest.mark.parametrize("space", ["w", "z"])
@pytest.mark.parametrize("loop", [False, True])
def test_keyframe_path_is_the_one_walk_through_keyframes(space: str, loop: bool) -> None:
    keys = seeds_to_z([0, 5, 9], 16) if space == "z" else torch.randn(3, 4, 16)
    path = keyframe_path(keys, 4, loop=loop, space=space)
    assert len(path) == path_length(3, 4, loop) == (12 if loop else 9)
    for k in range(3):  # every keyframe is on the path, exactly, at its step
        assert torch.equal(path[4 * k], keys[k])
    assert torch.equal(path[-1], keys[-1]) if not loop else not torch.equal(path[-1], keys[0])  # no repeated first
    mix = slerp if space == "z" else torch.lerp
    assert torch.equal(path[5], mix(keys[1:2], keys[2:3], 1 / 4)[0])
    if loop:  # the way back from the last keyframe to the first
        assert torch.equal(path[11], mix(keys[2:3], keys[:1], 3 / 4)[0])
    with pytest.raises(ValueError, match="two keyframes"):
        keyframe_path(keys[:1], 4, loop=loop, space=space)
    with pytest.raises(ValueError, match="space"):
        keyframe_path(keys, 4, space="x")


@pytest.mark.parametrize("space", ["w", "z"])
@pytest.mark.parametrize("loop", [False, True])
def test_interpolate_renders_keyframe_path(G: Generator, space: str, loop: bool) -> None:
    seeds, psi = [3, 1, 7], 0.7
    z = seeds_to_z(seeds, G.z_dim)
    with torch.no_grad():
        if space == "z":
            ws = G.mapping(keyframe_path(z, 5, loop, "z"), truncation_psi=psi)
        else:
            ws = keyframe_path(G.mapping(z, truncation_psi=psi), 5, loop)
        expected = to_uint8(torch.cat([G.synthesis(ws[i : i + 32], noise_mode="const") for i in range(0, len(ws), 32)]))
        frames = interpolate(G, seeds, steps=5, space=space, truncation_psi=psi, loop=loop)
        np.testing.assert_array_equal(frames, expected)
        if space == "w":  # explicit ws (the studio's keyframes) walk the same path
            keys = G.mapping(z, truncation_psi=psi)
            np.testing.assert_array_equal(interpolate_ws(G, keys, steps=5, loop=loop), frames)


def test_chunked_rendering_has_one_loop_and_matches_one_batch(G: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    with torch.no_grad():
        ws = G.mapping(seeds_to_z(list(range(7)), G.z_dim))
        chunks = [G.synthesis(ws[i : i + 3], noise_mode="const") for i in (0, 3, 6)]
        one_batch = to_uint8(G.synthesis(ws, noise_mode="const"))
    # Chunks of 3 are the chunks' images concatenated, bit for bit, and one batch's up to float rounding.
    np.testing.assert_array_equal(synthesize(G, ws, batch_size=3), np.concatenate([to_uint8(c) for c in chunks]))
    assert np.abs(synthesize(G, ws, batch_size=3).astype(int) - one_batch).max() <= 1
    np.testing.assert_array_equal(synthesize(G, ws, batch_size=7), one_batch)
    # Every renderer of many images goes through in_chunks (no second copy of the loop).
    from stylegan.projector import render_ws

    calls: list[int] = []

    def counting(run, inputs, batch_size, device):  # type: ignore[no-untyped-def]
        calls.append(batch_size)
        return in_chunks(run, inputs, batch_size, device)

    monkeypatch.setattr(sampling, "in_chunks", counting)
    generate(G, seeds=[0, 1], batch_size=5)
    render_ws(G, ws)
    interpolate(G, [0, 1], steps=2, space="z")
    interpolate_ws(G, ws[:2], steps=2)
    assert calls == [5, 32, 32, 32]


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
