"""Equalized learning rate, normalizations, blur, noise, AdaIN and minibatch stddev."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stylegan.training.layers import (
    AdaIN,
    Blur,
    EqualizedConv2d,
    EqualizedLinear,
    FromRGB,
    MinibatchStd,
    NoiseInjection,
    PixelNorm,
    ToRGB,
    downsample2x,
    upsample2x,
)


def test_equalized_linear_effective_weight_is_scaled_by_he_constant() -> None:
    layer = EqualizedLinear(in_features=50, out_features=7, gain=math.sqrt(2), lr_mul=0.1)
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.weight_gain == pytest.approx(math.sqrt(2) / math.sqrt(50) * 0.1)
    x = torch.randn(4, 50)
    expected = x @ (layer.weight * math.sqrt(2) / math.sqrt(50) * 0.1).T + layer.bias * 0.1
    torch.testing.assert_close(layer(x), expected)


def test_equalized_lr_init_is_unit_normal_over_lr_mul() -> None:
    layer = EqualizedLinear(in_features=256, out_features=256, lr_mul=0.01, bias_init=1.0)
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.05)
    # The stored bias is divided by lr_mul so that the effective bias is bias_init.
    torch.testing.assert_close(layer.bias * layer.bias_gain, torch.ones(256))
    # Effective weights have the He std 1/sqrt(fan_in) * gain whatever lr_mul is.
    eff = layer.weight * layer.weight_gain
    assert eff.std().item() == pytest.approx(math.sqrt(2) / 16, rel=0.05)


def test_equalized_layers_keep_unit_std_for_unit_input() -> None:
    fc = EqualizedLinear(in_features=512, out_features=512, gain=1.0)
    y = fc(torch.randn(256, 512))
    assert y.std().item() == pytest.approx(1.0, abs=0.1)
    conv = EqualizedConv2d(in_channels=64, out_channels=64, kernel_size=3, gain=1.0)
    y = conv(torch.randn(8, 64, 16, 16))[:, :, 1:-1, 1:-1]  # away from the zero padding
    assert y.std().item() == pytest.approx(1.0, abs=0.1)
    conv2 = EqualizedConv2d(in_channels=64, out_channels=64, kernel_size=3, gain=1.0, lr_mul=0.1)
    assert conv2.weight_gain == pytest.approx(0.1 / math.sqrt(64 * 9))


def test_equalized_conv_matches_plain_conv_with_scaled_weight() -> None:
    conv = EqualizedConv2d(in_channels=5, out_channels=4, kernel_size=3, activation="lrelu")
    x = torch.randn(2, 5, 6, 6)
    w = conv.weight * math.sqrt(2) / math.sqrt(5 * 9)
    torch.testing.assert_close(conv(x), F.leaky_relu(F.conv2d(x, w, conv.bias, padding=1), 0.2))


def test_pixel_norm_gives_unit_rms() -> None:
    x = torch.randn(6, 32) * 5
    y = PixelNorm()(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(6), rtol=1e-4, atol=1e-4)


def test_blur_kernel_and_impulse_response() -> None:
    blur = Blur()
    x = torch.zeros(1, 2, 5, 5)
    x[0, :, 2, 2] = 1.0
    y = blur(x)
    expected = torch.outer(torch.tensor([1.0, 2, 1]), torch.tensor([1.0, 2, 1])) / 16
    torch.testing.assert_close(y[0, 1, 1:4, 1:4], expected)
    assert y.sum().item() == pytest.approx(2.0)
    # A constant image keeps its value away from the border.
    c = blur(torch.full((1, 1, 6, 6), 3.0))
    torch.testing.assert_close(c[0, 0, 1:-1, 1:-1], torch.full((4, 4), 3.0))
    assert "kernel" not in blur.state_dict()


def test_up_and_down_sampling() -> None:
    x = torch.arange(4.0).view(1, 1, 2, 2)
    up = upsample2x(x)
    assert up.shape == (1, 1, 4, 4)
    torch.testing.assert_close(up[0, 0, :2, :2], torch.zeros(2, 2))
    torch.testing.assert_close(downsample2x(up), x)


def test_noise_injection_modes() -> None:
    a = NoiseInjection(channels=3, resolution=8, seed=5)
    x = torch.randn(2, 3, 8, 8)
    # Strength starts at zero: noise has no effect until learned.
    torch.testing.assert_close(a(x, "random"), x)
    with torch.no_grad():
        a.weight.fill_(0.5)
    torch.testing.assert_close(a(x, "none"), x)
    assert not torch.equal(a(x, "random"), a(x, "random"))
    const = a(x, "const")
    torch.testing.assert_close(const, a(x, "const"))
    # Same noise for every sample and channel, scaled per channel.
    torch.testing.assert_close((const - x)[0], (const - x)[1])
    # The const buffer is a function of the seed only, not of the global RNG.
    torch.manual_seed(123)
    b = NoiseInjection(channels=3, resolution=8, seed=5)
    torch.testing.assert_close(a.noise_const, b.noise_const)
    assert not torch.equal(a.noise_const, NoiseInjection(channels=3, resolution=8, seed=6).noise_const)
    assert "noise_const" in a.state_dict()
    with pytest.raises(ValueError, match="noise_mode"):
        a(x, "bogus")


def test_adain_output_stats_equal_style_scale_and_bias() -> None:
    ada = AdaIN(channels=6, w_dim=10)
    with torch.no_grad():
        ada.affine.bias.normal_()
    x = torch.randn(3, 6, 8, 8) * 4 + 2
    w = torch.randn(3, 10)
    scale, bias = ada.styles(w)
    y = ada(x, w)
    torch.testing.assert_close(y.mean(dim=(2, 3)), bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), scale.abs(), rtol=1e-3, atol=1e-3)
    # Vectorized over the batch: each sample only sees its own style.
    torch.testing.assert_close(ada(x[1:2], w[1:2]), y[1:2])


def test_adain_scale_is_biased_to_one() -> None:
    ada = AdaIN(channels=4, w_dim=8)
    scale, bias = ada.styles(torch.zeros(2, 8))
    torch.testing.assert_close(scale, torch.ones(2, 4))
    torch.testing.assert_close(bias, torch.zeros(2, 4))


def _old_adain(ada: AdaIN, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """AdaIN.forward before the channels_last path (frozen, to compare bits)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        scale, bias = ada.styles(w.float())
        y = F.instance_norm(x.float(), eps=1e-8)
        y = y * scale[:, :, None, None] + bias[:, :, None, None]
    return y.to(x.dtype)


def _adain_case() -> tuple[AdaIN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ada = AdaIN(channels=16, w_dim=8)
    with torch.no_grad():
        ada.affine.bias.normal_()
    return ada, torch.randn(4, 16, 8, 8) * 3 + 1, torch.randn(4, 8)


def test_adain_on_cpu_keeps_instance_norm_bits_in_every_layout() -> None:
    # CPU runs (channels_last ones included, as params.yaml trains) are pinned to these bits.
    ada, x, w = _adain_case()
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        assert torch.equal(ada(xf, w), _old_adain(ada, xf, w)), fmt
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb = xf.bfloat16()
            assert torch.equal(ada(xb, w), _old_adain(ada, xb, w)), fmt


def test_adain_keeps_channels_last_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan.training import layers

    cl = torch.channels_last
    meta = torch.empty(2, 16, 8, 8, device="meta")
    assert layers._norm_keeps_channels_last(meta.contiguous(memory_format=cl))
    assert not layers._norm_keeps_channels_last(meta)  # NCHW: F.instance_norm, as before
    assert not layers._norm_keeps_channels_last(torch.empty(2, 16, 1, 1, device="meta").contiguous(memory_format=cl))
    assert not layers._norm_keeps_channels_last(torch.empty(2, 16, 8, 8).contiguous(memory_format=cl))  # CPU
    # The path a GPU takes, run on the CPU: same numbers as instance_norm, and the layout is kept.
    monkeypatch.setattr(layers, "_norm_keeps_channels_last", lambda t: not t.is_contiguous())
    ada, x, w = _adain_case()
    ref = _old_adain(ada, x, w)
    y = ada(x.contiguous(memory_format=cl), w)
    assert y.is_contiguous(memory_format=cl) and not y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(ada(x, w), ref)  # NCHW input still takes F.instance_norm
    torch.testing.assert_close(
        layers.instance_norm_channels_last(x.contiguous(memory_format=cl), 1e-8),
        F.instance_norm(x, eps=1e-8),
        atol=1e-5,
        rtol=1e-5,
    )
    # bf16 maps under autocast: statistics in fp32, bf16 out, still channels_last.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.bfloat16().contiguous(memory_format=cl)
        yb = ada(xb, w)
        refb = _old_adain(ada, xb, w)
    assert yb.dtype == torch.bfloat16 and yb.is_contiguous(memory_format=cl)
    torch.testing.assert_close(yb.float(), refb.float(), atol=2e-2, rtol=1e-2)  # bf16 rounding of the output


def test_minibatch_std_value_and_odd_batches() -> None:
    mb = MinibatchStd(group_size=4)
    x = torch.randn(4, 3, 2, 2)
    y = mb(x)
    assert y.shape == (4, 4, 2, 2)
    expected = x.std(dim=0, unbiased=False).mean()
    torch.testing.assert_close(y[:, 3], torch.full((4, 2, 2), expected.item()), rtol=1e-4, atol=1e-4)
    # 6 is not divisible by 4: groups of gcd(4, 6) = 2 (samples i and i + 3).
    x6 = torch.randn(6, 3, 2, 2)
    y6 = mb(x6)
    e0 = torch.stack([x6[0], x6[3]]).std(dim=0, unbiased=False).mean()
    assert y6[0, 3, 0, 0].item() == pytest.approx(e0.item(), rel=1e-4)
    assert y6[3, 3, 0, 0].item() == pytest.approx(e0.item(), rel=1e-4)
    assert mb(torch.randn(1, 3, 2, 2)).shape == (1, 4, 2, 2)
    assert mb(torch.randn(3, 3, 2, 2)).shape == (3, 4, 2, 2)


def test_rgb_layers() -> None:
    assert ToRGB(in_channels=8)(torch.randn(2, 8, 4, 4)).shape == (2, 3, 4, 4)
    frgb = FromRGB(out_channels=8)
    x = torch.randn(2, 3, 4, 4)
    y = frgb(x)
    assert y.shape == (2, 8, 4, 4)
    pre = F.conv2d(x, frgb.conv.weight * math.sqrt(2) / math.sqrt(3), frgb.conv.bias)
    torch.testing.assert_close(y, F.leaky_relu(pre, 0.2))  # 1x1 conv, He gain, leaky ReLU
