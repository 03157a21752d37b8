"""Visual reports of a tiny real Generator: every figure written, and what each must show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylegan import reports
from stylegan.training.networks import Generator
from tests.helpers import tiny_generator


@pytest.fixture(scope="module")
def G() -> Generator:
    return tiny_generator()


def write_ticks(path: Path) -> Path:
    kimg = np.linspace(0, 10, 20)
    lines = ["kimg,resolution,alpha,loss_G,loss_D"] + [
        f"{k:.3f},8,1.0,{2 - 0.1 * k:.4f},{0.5 + 0.02 * k:.4f}" for k in kimg
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_write_reports_writes_every_figure(G: Generator, tmp_path: Path) -> None:
    notes: list[str] = []
    ticks = write_ticks(tmp_path / "ticks.csv")
    written = reports.write_reports(G, tmp_path / "reports", grid_size=9, interpolation_steps=3, ticks=ticks,
                                    log=notes.append)
    names = {p.name for p in written}
    assert names == {
        "samples.png", "truncation_sweep.png", "style_mixing_coarse.png", "style_mixing_middle.png",
        "noise_variation.png", "noise_std.npy", "interpolation.gif", "loss_curves.png",
    }
    # A 32x32 generator has no 64+ ("fine") layers: skipped with one line, not an error.
    assert len(notes) == 1 and "fine" in notes[0]
    gif = Image.open(tmp_path / "reports" / "interpolation.gif")
    assert gif.is_animated and gif.n_frames == 4 * 3  # 4 keyframes, looping back to the first
    assert not list((tmp_path / "reports").glob("*.tmp"))  # atomic writes leave no temp files


def test_truncation_sweep_converges_to_the_average(G: Generator) -> None:
    psis = (1.0, 0.5, 0.0)
    grid = np.asarray(reports.truncation_sweep(G, [0, 1, 2], psis))
    assert grid.shape == (3 * 32, 3 * 32, 3)
    tiles = grid.reshape(3, 32, 3, 32, 3).transpose(0, 2, 1, 3, 4)  # (row seed, psi, H, W, C)
    assert not np.array_equal(tiles[0, 0], tiles[1, 0])  # psi 1: different seeds differ
    assert np.array_equal(tiles[0, 2], tiles[1, 2]) and np.array_equal(tiles[1, 2], tiles[2, 2])  # psi 0: w_avg


def test_noise_figure_std_map(G: Generator) -> None:
    grid, std = reports.noise_figure(G, seed=3, n=4)
    assert grid.size == (5 * 32, 32) and std.shape == (32, 32)
    assert std.max() > 0  # noise strengths of 0.5 change pixels
    last = np.asarray(grid)[:, 4 * 32 :]
    assert last.max() == 255  # the std map is normalised to its peak


def test_loss_curves_draw_both_series(tmp_path: Path) -> None:
    img = np.asarray(reports.loss_curves(reports.read_ticks(write_ticks(tmp_path / "t.csv"))))
    blue = np.all(img == reports._COLOURS[0], axis=-1).sum()
    red = np.all(img == reports._COLOURS[1], axis=-1).sum()
    assert blue > 200 and red > 200  # two drawn lines, not an empty frame
    with pytest.raises(ValueError, match="kimg"):
        (tmp_path / "bad.csv").write_text("step,loss\n1,2\n")
        reports.read_ticks(tmp_path / "bad.csv")
