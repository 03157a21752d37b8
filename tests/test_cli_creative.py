"""NVIDIA-style CLI: --outdir/--trunc, seedNNNN.png, mix, video, evaluate from the registry, --help."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.checkpoint import export_generator
from stylegan.cli import build_parser, main
from stylegan.sampling import generate, mix_styles
from stylegan.training.networks import Generator
from tests.helpers import tiny_model_config


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    G = Generator(tiny_model_config(max_resolution=8))
    return export_generator(G.eval(), tmp_path_factory.mktemp("g") / "export").parent


def _G(export: Path) -> Generator:
    from stylegan.checkpoint import load_generator

    return load_generator(export)


def test_help_is_plain_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"sample", "mix", "video", "project", "studio", "evaluate", "train"} <= set(commands)
    for name in [None, *commands]:
        with pytest.raises(SystemExit):
            main([name, "--help"] if name else ["--help"])
        text = capsys.readouterr().out
        assert "`" not in text, f"reST backticks in pokegan {name} --help"
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--psi PSI, --trunc PSI" in text and "(default: 0.7)" in text and "(default: 0-63)" in text
    assert "--out OUT, --outdir OUT" in text and "(default: None)" not in text


def test_sample_accepts_nvidia_names_and_writes_seed04d(export: Path, tmp_path: Path) -> None:
    assert main(["sample", "--network", str(export), "--seeds", "3,12345", "--trunc", "0.5",
                 "--outdir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seed0003.png", "seed12345.png"]
    img = np.asarray(Image.open(tmp_path / "out" / "seed0003.png"))
    # The same batch as the CLI drew (conv results may depend on the batch size in the last bits).
    np.testing.assert_array_equal(img, generate(_G(export), seeds=[3, 12345], truncation_psi=0.5)[0])


def test_mix_writes_the_style_mixing_figure(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mix"
    assert main(["mix", "--model", str(export), "--rows", "1,2,3", "--cols", "7,8", "--styles", "0-1",
                 "--outdir", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["grid.png"] + [f"{r}-{c}.png" for r in (1, 2, 3) for c in (7, 8)])
    G = _G(export)
    m = mix_styles(G, source_seeds=[7, 8], destination_seeds=[1, 2, 3], styles=(0, 2), truncation_psi=1.0)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "2-8.png")), m["mixed"][1, 1])
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (4 * 8, 3 * 8, 3)  # header row + 3 rows; blank corner + 2 columns
    assert (grid[:8, :8] == 255).all()  # blank corner
    np.testing.assert_array_equal(grid[:8, 8:16], m["sources"][0])  # seed 7 across the top
    np.testing.assert_array_equal(grid[8:16, :8], m["destinations"][0])  # seed 1 down the left
    assert np.abs(grid[:8, 8:16].astype(int) - generate(G, seeds=[7])[0]).max() <= 1
    np.testing.assert_array_equal(grid[24:32, 16:24], m["mixed"][2, 1])
    # Named ranges work; out-of-range layers are one clear line.
    assert main(["mix", "--model", str(export), "--rows", "1", "--cols", "2", "--styles", "coarse",
                 "--outdir", str(out)]) == 0
    capsys.readouterr()
    assert main(["mix", "--model", str(export), "--rows", "1", "--cols", "2", "--styles", "0-6",
                 "--outdir", str(out)]) == 2
    assert "layers must lie in 0-3" in capsys.readouterr().err
    assert main(["mix", "--model", str(export), "--rows", "1", "--cols", "2", "--styles", "fine"]) == 2
    assert "has no fine styles" in capsys.readouterr().err


def test_video_gif_and_mp4(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gif = tmp_path / "lerp.gif"
    assert main(["video", "--model", str(export), "--seeds", "0-2", "--frames", "4", "--output", str(gif)]) == 0
    im = Image.open(gif)
    assert im.n_frames == 12  # 3 transitions (looping back to seed 0) x 4 frames
    first = np.asarray(im.convert("RGB"))
    assert first.shape == (8, 8, 3)
    assert main(["video", "--model", str(export), "--seeds", "0,1", "--frames", "3", "--space", "z",
                 "--no-loop", "--output", str(tmp_path / "z.gif")]) == 0
    assert Image.open(tmp_path / "z.gif").n_frames == 4
    assert main(["video", "--model", str(export), "--seeds", "5", "--output", str(gif)]) == 2
    assert "at least two seeds" in capsys.readouterr().err
    assert main(["video", "--model", str(export), "--seeds", "0,1", "--output", str(tmp_path / "v.avi")]) == 2
    assert "use a .gif or .mp4" in capsys.readouterr().err
    try:
        import imageio_ffmpeg
    except ImportError:
        pytest.skip("imageio-ffmpeg (video extra) not installed: MP4 path untested")
    mp4 = tmp_path / "lerp.mp4"
    assert main(["video", "--model", str(export), "--seeds", "0-1", "--frames", "6", "--scale", "4",
                 "--output", str(mp4)]) == 0
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (32, 32) and len(frames) == 12


@pytest.mark.parametrize("space", ["w", "z"])
@pytest.mark.parametrize("loop", [True, False])
def test_video_frames_are_sampling_interpolate(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               space: str, loop: bool) -> None:
    """`pokegan video` draws sampling.interpolate's frames, bit for bit (no path of its own)."""
    import stylegan.sampling as sampling

    written: list[np.ndarray] = []
    monkeypatch.setattr(sampling, "save_animation", lambda frames, path, **kw: written.append(frames) or Path(path))
    assert main(["video", "--model", str(export), "--seeds", "4,0,2", "--frames", "3", "--space", space,
                 "--loop" if loop else "--no-loop", "--trunc", "0.7", "--output", str(tmp_path / "v.gif")]) == 0
    expected = sampling.interpolate(_G(export), [4, 0, 2], steps=3, space=space, truncation_psi=0.7, loop=loop)
    assert len(written) == 1 and len(expected) == (9 if loop else 7)
    np.testing.assert_array_equal(written[0], expected)


def test_video_mp4_without_imageio_ffmpeg_is_one_line(export: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert main(["video", "--model", str(export), "--seeds", "0,1", "--output", str(tmp_path / "v.mp4")]) == 2
    assert "pokegan[video]" in capsys.readouterr().err and not (tmp_path / "v.mp4").exists()


def test_evaluate_accepts_a_registry_uri(export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def load_registered_generator(uri: str) -> Generator:
        seen.append(uri)
        return _G(export)

    fake = types.ModuleType("flows.sample")
    fake.load_registered_generator = load_registered_generator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.sample", fake)
    monkeypatch.setitem(sys.modules, "flows", types.ModuleType("flows"))
    got: list[object] = []

    def evaluate_generator(G: object, *args: object, **kwargs: object) -> dict[str, float]:
        got.append(G)  # the registered generator reaches the metrics (they are tested on their own)
        return {"swd": 1.5}

    import stylegan.metrics

    monkeypatch.setattr(stylegan.metrics, "evaluate_generator", evaluate_generator)
    (tmp_path / "params.yaml").write_text("evaluate: {num_samples: 4}\n")
    rc = main(["evaluate", "--model", "models:/pokemon-stylegan@champion", "--params", str(tmp_path / "params.yaml"),
               "--data", str(tmp_path), "--out", str(tmp_path / "eval.json"), "--reports", str(tmp_path / "reports")])
    assert rc == 0 and seen == ["models:/pokemon-stylegan@champion"]
    assert len(got) == 1 and got[0].img_resolution == 8
