"""Projector: a known w is recovered; files, the CLI and `pokegan sample --projected-w` agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.checkpoint import export_generator
from stylegan.cli import main
from stylegan.projector import load_projected_w, load_target, noise_regularization, project, render_ws, w_stats
from stylegan.sampling import generate
from stylegan.training.networks import Generator
from tests.flows_helpers import sprite_folder
from tests.helpers import tiny_model_config

RECOVERY_BOUND = 10.0  # mean |error| in 0..255 units after 150 pixel-loss steps (measured 0.6-7.9)


@pytest.fixture(scope="module")
def G() -> Generator:
    """A tiny 16x16 generator whose outputs stay mostly in [-1, 1], as a trained one's do (a fresh
    one's toRGB overshoots to +-5, and clamped targets are then not reachable), with w_avg set."""
    torch.manual_seed(0)
    cfg = tiny_model_config(fmap_base=64, fmap_max=32)
    G = Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in G.synthesis.named_parameters():
            if "torgb" in name and name.endswith("weight"):
                p.mul_(0.3)
        G.mapping.w_avg.copy_(w_stats(G, 2000)[0][0])
    return G


@pytest.mark.slow
def test_a_known_w_is_recovered(G: Generator) -> None:
    target = generate(G, seeds=[1], truncation_psi=0.7)[0]
    result = project(G, target, steps=150, w_avg_samples=2000, num_frames=5)
    assert result.start_error > 30  # the average w draws something else
    assert result.pixel_error < RECOVERY_BOUND, result.pixel_error
    assert result.ws.shape == (G.num_ws, G.w_dim) and torch.equal(result.ws[0], result.ws[-1])  # one w
    assert len(result.frames) == 5 and len(result.losses) == 150
    # Deterministic on CPU: same target, steps and seed give the same w.
    first = project(G, target, steps=15, w_avg_samples=2000, num_frames=0)
    assert torch.equal(first.ws, project(G, target, steps=15, w_avg_samples=2000, num_frames=0).ws)


def test_w_plus_and_noise_maps_with_regularisation(G: Generator) -> None:
    target = generate(G, seeds=2, truncation_psi=0.7)[0]
    before = {k: v.clone() for k, v in G.synthesis.named_buffers() if k.endswith("noise_const")}
    r = project(G, target, steps=30, w_plus=True, optimize_noise=True, w_avg_samples=1000, num_frames=0)
    assert not torch.equal(r.ws[0], r.ws[-1])  # one w per layer
    assert set(r.noise) == set(before)
    for k, v in r.noise.items():  # renormalised after every step, and G's own maps are untouched
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.square().mean()) - 1) < 1e-3
        assert torch.equal(dict(G.synthesis.named_buffers())[k], before[k])
    # The drawing with the fitted noise is what render_ws gives back from the saved maps.
    np.testing.assert_array_equal(render_ws(G, r.ws[None], noise=r.noise)[0], r.image)
    # The regulariser: white noise is near 0, a smooth map is penalised.
    white = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(white[..., :8, :8], size=(32, 32), mode="bilinear")
    assert float(noise_regularization([white])) < 0.01 < float(noise_regularization([smooth]))


def test_cli_project_a_sprite_then_sample_it(G: Generator, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export_generator(G, tmp_path / "g")
    sprite = sprite_folder(tmp_path / "sprites", n=2, size=40) / "2.png"  # an RGBA ellipse, as a real sprite
    out = tmp_path / "proj"
    rc = main(["project", "--model", str(tmp_path / "g"), "--target", str(sprite), "--steps", "40",
               "--outdir", str(out), "--perceptual-weight", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean |error|" in text and "PSNR" in text  # the reconstruction error is reported
    err = float(text.split("mean |error| ")[1].split("/255")[0])
    start = float(text.split("(from ")[1].split(" at")[0])
    assert err < start
    for name in ("projected_w.npz", "target.png", "proj.png", "target_proj.png", "proj.gif"):
        assert (out / name).is_file(), name
    assert Image.open(out / "target_proj.png").size == (32, 16)  # target | reconstruction
    gif = Image.open(out / "proj.gif")
    assert gif.n_frames > 10
    # The target is framed as prepare frames the training set: cropped, padded, white background.
    np.testing.assert_array_equal(np.asarray(Image.open(out / "target.png")), load_target(sprite, 16))

    ws, noise = load_projected_w(out / "projected_w.npz", G)
    assert ws.shape == (1, G.num_ws, G.w_dim) and noise == {}
    assert main(["sample", "--model", str(tmp_path / "g"), "--projected-w", str(out / "projected_w.npz"),
                 "--outdir", str(tmp_path / "render")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "render" / "proj00.png")),
                                  np.asarray(Image.open(out / "proj.png")))


def test_perceptual_loss_runs_when_the_weights_are_installed(G: Generator) -> None:
    from stylegan.projector import EffnetPerceptual
    from stylegan.training.effnet import weights_available

    if not weights_available():
        pytest.skip("EfficientNet-Lite0 weights (metrics extra) not installed")
    P = EffnetPerceptual(size=64)
    target = generate(G, seeds=[3], truncation_psi=0.7)[0]
    t = (torch.from_numpy(target.copy()).permute(2, 0, 1)[None].float() - 128) / 127.5
    assert float(P.distance(P.features(t), P.features(t))) == 0.0
    assert float(P.distance(P.features(t), P.features(-t))) > 0.1
    r = project(G, target, steps=8, perceptual=P, w_avg_samples=500, num_frames=0)
    assert r.losses[-1] < r.losses[0]


def test_bad_targets_and_files(G: Generator, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export_generator(G, tmp_path / "g")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert main(["project", "--model", str(tmp_path / "g"), "--target", str(tmp_path / "junk.png"),
                 "--outdir", str(tmp_path / "o")]) == 2
    assert "not a readable image (unrecognised format)" in capsys.readouterr().err
    assert main(["project", "--model", str(tmp_path / "g"), "--target", str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="nothing to project"):
        load_target(tmp_path / "empty.png", 16)
    np.savez(tmp_path / "wrong.npz", w=np.zeros((1, 3, 16), np.float32))
    assert main(["sample", "--model", str(tmp_path / "g"), "--projected-w", str(tmp_path / "wrong.npz"),
                 "--outdir", str(tmp_path / "r")]) == 2
    assert "this generator takes (N, 6, 16)" in capsys.readouterr().err
