"""Generator / discriminator: stages, fade-in, truncation, mixing, noise modes, parameter counts."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from stylegan.config import ModelConfig
from stylegan.training.layers import downsample2x, upsample2x
from stylegan.training.networks import Discriminator, Generator, style_layer_range, ws_for_resolution
from tests.helpers import tiny_model_config

TINY = tiny_model_config(fmap_base=128)


@pytest.fixture
def G() -> Generator:
    g = Generator(TINY)
    with torch.no_grad():  # make noise and w_avg matter (both start at zero)
        for name, p in g.named_parameters():
            if "noise" in name:
                p.normal_(0, 0.5)
    return g


@pytest.fixture
def D() -> Discriminator:
    return Discriminator(TINY)


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_output_shapes_per_stage(G: Generator, D: Discriminator) -> None:
    z = torch.randn(3, 16)
    for res in (4, 8, 16):
        for alpha in (0.0, 0.5, 1.0):
            img = G(z, resolution=res, alpha=alpha)
            assert img.shape == (3, 3, res, res)
            assert torch.isfinite(img).all()
            assert D(img, resolution=res, alpha=alpha).shape == (3, 1)
    assert G(z).shape == (3, 3, 16, 16)  # resolution=None -> img_resolution
    assert D(torch.randn(3, 3, 16, 16)).shape == (3, 1)
    assert G.mapping(z).shape == (3, G.num_ws, 16) and G.num_ws == 6


def test_bad_inputs_are_rejected(G: Generator, D: Discriminator) -> None:
    z = torch.randn(2, 16)
    with pytest.raises(ValueError, match="resolution"):
        G(z, resolution=32)
    with pytest.raises(ValueError, match="resolution"):
        G(z, resolution=12)
    with pytest.raises(ValueError, match="alpha"):
        G(z, resolution=8, alpha=1.5)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="fresh")
    with pytest.raises(AssertionError, match="z of shape"):
        G(torch.randn(2, 8))
    with pytest.raises(AssertionError, match="images of shape"):
        D(torch.randn(2, 3, 8, 8), resolution=16)


def _manual_features(G: Generator, ws: torch.Tensor) -> dict[int, torch.Tensor]:
    s = G.synthesis
    x4 = s.b4(None, ws[:, 0:2], "const")
    x8 = s.b8(x4, ws[:, 2:4], "const")
    x16 = s.b16(x8, ws[:, 4:6], "const")
    return {4: x4, 8: x8, 16: x16}


def test_generator_fade_in(G: Generator) -> None:
    ws = G.mapping(torch.randn(2, 16))
    feats = _manual_features(G, ws)
    s = G.synthesis
    old = upsample2x(s.b8.torgb(feats[8]))
    new = s.b16.torgb(feats[16])
    assert not torch.allclose(old, new)
    torch.testing.assert_close(s(ws, resolution=16, alpha=0.0, noise_mode="const"), old)
    torch.testing.assert_close(s(ws, resolution=16, alpha=1.0, noise_mode="const"), new)
    torch.testing.assert_close(s(ws, resolution=16, alpha=0.25, noise_mode="const"), old + 0.25 * (new - old))
    # A tensor alpha (what a compiled trainer passes) gives the same result.
    torch.testing.assert_close(
        s(ws, resolution=16, alpha=torch.tensor(0.25), noise_mode="const"), old + 0.25 * (new - old)
    )
    # alpha=0 at 16 is exactly the finished 8x8 stage, nearest-upsampled.
    torch.testing.assert_close(
        s(ws, resolution=16, alpha=0.0, noise_mode="const"), upsample2x(s(ws, resolution=8, noise_mode="const"))
    )


def test_discriminator_fade_in(D: Discriminator) -> None:
    img = torch.randn(4, 3, 16, 16)
    new = D.b16(D.b16.fromrgb(img))  # 8x8 features from the new input layer
    old = D.b8.fromrgb(downsample2x(img))  # 8x8 features from the previous input layer
    assert not torch.allclose(old, new)
    torch.testing.assert_close(D(img, resolution=16, alpha=1.0), D.b4(D.b8(new)))
    torch.testing.assert_close(D(img, resolution=16, alpha=0.0), D.b4(D.b8(old)))
    # Mirror of the generator: alpha=0 sees only the downsampled image through the 8x8 stage.
    torch.testing.assert_close(D(img, resolution=16, alpha=0.0), D(downsample2x(img), resolution=8))
    torch.testing.assert_close(D(img, resolution=16, alpha=0.5), D.b4(D.b8(old + 0.5 * (new - old))))


def test_truncation(G: Generator) -> None:
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    z = torch.randn(3, 16)
    ws = G.mapping(z)
    avg = G.mapping.w_avg.expand(3, G.num_ws, -1)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), avg)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.5), avg + 0.5 * (ws - avg))
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], avg[:, :2])
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    # psi=0 makes every z give the same image.
    imgs = G(z, truncation_psi=0.0, noise_mode="const")
    torch.testing.assert_close(imgs[0], imgs[1])


def test_w_avg_tracking(G: Generator) -> None:
    z = torch.randn(8, 16)
    before = G.mapping.w_avg.clone()
    G(z, update_w_avg=False)
    torch.testing.assert_close(G.mapping.w_avg, before)
    w_mean = G.mapping(z)[:, 0].mean(0)
    G.mapping(z, update_w_avg=True)
    beta = TINY.w_avg_beta
    torch.testing.assert_close(G.mapping.w_avg, beta * before + (1 - beta) * w_mean)


def test_style_mixing_uses_both_latents(G: Generator) -> None:
    seen: list[torch.Tensor] = []
    G.synthesis.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    z = torch.randn(2, 16)
    w1 = G.mapping(z)
    cutoffs = set()
    for _ in range(40):
        G(z, resolution=8, mixing_prob=1.0, noise_mode="const")
        ws = seen[-1]
        same = torch.isclose(ws, w1).all(dim=2).all(dim=0)  # (num_ws,) rows taken from z
        k = int(same.int().sum())
        assert same[:k].all() and not same[k:].any(), "rows from z must come first"
        cutoffs.add(k)
        # The remaining rows come from one other latent.
        torch.testing.assert_close(ws[:, k:], ws[:, -1:].expand_as(ws[:, k:]))
    # Crossover is drawn among the layers active at 8x8 (4 of them): 1, 2 or 3.
    assert cutoffs == {1, 2, 3}
    assert ws_for_resolution(8) == 4
    # The mix changes the image; mixing_prob=0 keeps one w everywhere.
    torch.manual_seed(1)
    mixed = G(z, resolution=8, mixing_prob=1.0, noise_mode="const")
    plain = G(z, resolution=8, mixing_prob=0.0, noise_mode="const")
    assert not torch.allclose(mixed, plain)
    torch.testing.assert_close(seen[-1], w1)


def test_noise_modes(G: Generator) -> None:
    z = torch.randn(2, 16)
    a = G(z, noise_mode="const")
    torch.testing.assert_close(a, G(z, noise_mode="const"))
    assert not torch.allclose(G(z, noise_mode="random"), G(z, noise_mode="random"))
    none = G(z, noise_mode="none")
    quiet = copy.deepcopy(G)
    with torch.no_grad():
        for name, p in quiet.named_parameters():
            if "noise" in name:
                p.zero_()
    torch.testing.assert_close(none, quiet(z, noise_mode="random"))
    assert not torch.allclose(none, a)
    # Two separately built generators share the const noise (state dicts are portable).
    torch.manual_seed(99)
    other = Generator(TINY)
    torch.testing.assert_close(other.synthesis.b16.noise1.noise_const, G.synthesis.b16.noise1.noise_const)


def test_style_layer_ranges() -> None:
    assert style_layer_range("coarse", 18) == range(0, 4)
    assert style_layer_range("middle", 18) == range(4, 8)
    assert style_layer_range("fine", 18) == range(8, 18)
    assert style_layer_range("fine", 6) == range(6, 6)
    assert style_layer_range("middle", 6) == range(4, 6)
    with pytest.raises(ValueError, match="coarse"):
        style_layer_range("medium", 18)


def test_state_dict_keys_and_determinism() -> None:
    torch.manual_seed(3)
    a = Generator(TINY).state_dict()
    torch.manual_seed(3)
    b = Generator(TINY).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "synthesis.b16.conv0.weight" in a and "synthesis.b4.const" in a and "mapping.w_avg" in a
    assert "b16.fromrgb.conv.weight" in Discriminator(TINY).state_dict()
    torch.testing.assert_close(a["synthesis.b4.const"], torch.ones(1, 16, 4, 4))


def test_gradients_reach_only_active_blocks(G: Generator, D: Discriminator) -> None:
    z = torch.randn(4, 16)
    D(G(z, resolution=8, alpha=0.5, mixing_prob=0.9), resolution=8, alpha=0.5).sum().backward()
    assert G.mapping.fc0.weight.grad is not None and G.synthesis.b8.conv0.weight.grad.abs().sum() > 0
    assert G.synthesis.b4.torgb.conv.weight.grad is not None  # the fading old path
    assert G.synthesis.b16.conv0.weight.grad is None
    assert D.b8.fromrgb.conv.weight.grad is not None and D.b4.fromrgb.conv.weight.grad is not None
    assert D.b16.conv0.weight.grad is None


def test_odd_batch_sizes_and_channels_last(G: Generator, D: Discriminator) -> None:
    img = torch.randn(6, 3, 16, 16)
    assert D(img).shape == (6, 1)
    assert D(img[:3]).shape == (3, 1)
    cl = img.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(D(cl), D(img), rtol=1e-4, atol=1e-4)
    Gcl = copy.deepcopy(G).to(memory_format=torch.channels_last)
    z = torch.randn(2, 16)
    torch.testing.assert_close(Gcl(z, noise_mode="const"), G(z, noise_mode="const"), rtol=1e-4, atol=1e-4)


def test_compiles_without_graph_breaks(G: Generator, D: Discriminator) -> None:
    # fullgraph=True fails on any graph break (Python-side state, .item(), data-dependent branches).
    torch._dynamo.reset()
    g = torch.compile(G, backend="eager", fullgraph=True)
    d = torch.compile(D, backend="eager", fullgraph=True)
    z = torch.randn(4, 16)
    alpha = torch.tensor(0.5)
    img = g(z, resolution=8, alpha=alpha, mixing_prob=0.9, update_w_avg=True, noise_mode="const")
    assert d(img, resolution=8, alpha=alpha).shape == (4, 1)
    torch.manual_seed(0)
    eager = G(z, resolution=8, alpha=alpha, noise_mode="const")
    torch.manual_seed(0)
    torch.testing.assert_close(g(z, resolution=8, alpha=alpha, noise_mode="const"), eager)


def test_paper_parameter_counts() -> None:
    cfg = ModelConfig()  # paper defaults: 1024x1024, fmap_base 8192, fmap_max 512, fused_scale auto
    G = Generator(cfg)
    n_g = _nparams(G)
    # Official StyleGAN (karras2019stylegan-ffhq-1024x1024): 26,219,627 = mapping + synthesis + ToRGBs.
    assert round(n_g / 1e5) / 10 == 26.2
    assert n_g == 26_219_627
    assert _nparams(G.mapping) == 8 * (512 * 512 + 512)
    # ... with its resampling fused from 128 up (the fused convs reuse the 3x3 weights).
    assert fused_resolutions(G) == [128, 256, 512, 1024]
    del G
    D = Discriminator(cfg)
    n_d = _nparams(D)
    assert n_d == 23_087_249  # the official StyleGAN 1024 discriminator
    assert fused_resolutions(D) == [128, 256, 512, 1024]
    print(f"paper G trainable parameters: {n_g:,}; D: {n_d:,}")


def fused_resolutions(net: Generator | Discriminator) -> list[int]:
    """Resolutions whose G block upsamples inside its first conv (D: downsamples inside its last)."""
    if isinstance(net, Generator):
        return [r for r in net.synthesis.resolutions if r > 4 and getattr(net.synthesis, f"b{r}").conv0.fused_scale]
    return [r for r in net.resolutions if r > 4 and getattr(net, f"b{r}").conv1.fused_scale]


@pytest.mark.parametrize("blur", [True, False])
def test_fused_scale_gives_the_unfused_outputs_for_the_same_weights(blur: bool) -> None:
    torch.manual_seed(0)
    base = replace(TINY, blur=blur, max_resolution=32)
    plain, fused = replace(base, fused_scale=False), replace(base, fused_scale=True)
    G0, D0 = Generator(plain), Discriminator(plain)
    G1, D1 = Generator(fused), Discriminator(fused)
    with torch.no_grad():  # non-zero noise strengths and biases, so every term of the block counts
        for name, p in G0.named_parameters():
            if "noise" in name or "bias" in name:
                p.normal_(0, 0.5)
        for name, p in D0.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)
    G1.load_state_dict(G0.state_dict())  # strict: the same keys and shapes
    D1.load_state_dict(D0.state_dict())
    assert G1.synthesis.b8.conv0.fused_scale and not G0.synthesis.b8.conv0.fused_scale
    assert D1.b8.conv1.fused_scale and not D0.b8.conv1.fused_scale
    # float32 (the networks' fp32 islands cast to float32): the fused kernels only change the
    # order of the sums, so the paths agree to rounding; a misplaced tap or blur is off by O(1).
    z = torch.randn(3, 16)
    for res, alpha in ((8, 1.0), (16, 0.3), (32, 1.0)):
        img0 = G0(z, resolution=res, alpha=alpha, noise_mode="const")
        img1 = G1(z, resolution=res, alpha=alpha, noise_mode="const")
        torch.testing.assert_close(img1, img0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(D1(img0, resolution=res, alpha=alpha), D0(img0, resolution=res, alpha=alpha),
                                   rtol=1e-5, atol=1e-5)
    # Gradients agree too (what training sees).
    for G in (G0, G1):
        G.zero_grad()
        G(z, resolution=32, noise_mode="const").square().sum().backward()
    g0 = {k: p.grad for k, p in G0.named_parameters() if p.grad is not None}
    g1 = {k: p.grad for k, p in G1.named_parameters() if p.grad is not None}
    assert g0.keys() == g1.keys() and "synthesis.b32.conv0.weight" in g0
    for k in g0:  # relative to each gradient's norm: sums that cancel make single entries noisy in float32
        err = torch.linalg.vector_norm(g1[k] - g0[k]) / torch.linalg.vector_norm(g0[k]).clamp_min(1e-12)
        assert err < 1e-4, f"{k}: relative gradient difference {err:.2e}"


def test_fused_scale_auto_follows_the_official_128_threshold() -> None:
    small = replace(TINY, fmap_base=64, fmap_max=8, max_resolution=256)
    for setting, expected in (("auto", [128, 256]), (True, [8, 16, 32, 64, 128, 256]), (False, [])):
        cfg = replace(small, fused_scale=setting)
        assert fused_resolutions(Generator(cfg)) == expected
        assert fused_resolutions(Discriminator(cfg)) == expected
