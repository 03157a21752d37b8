"""Building blocks of StyleGAN v1 / Progressive GAN.

Equalized learning rate: weights are stored as N(0, 1) / lr_mul and scaled at run time by
``gain / sqrt(fan_in) * lr_mul`` (``w = self.weight * self.weight_gain`` in ``forward``), so
Adam sees every parameter at the same scale. No hooks: the state dict stays plain and deep
copies (EMA) and ``torch.compile`` need nothing special.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stylegan.device import fp32_region

SQRT2 = math.sqrt(2.0)


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalized learning rate (and optional activation)."""

    def __init__(
        self,
        *,
        in_features: int,  # input width
        out_features: int,  # output width
        bias: bool = True,  # learn an additive bias
        bias_init: float = 0.0,  # initial value of the (effective) bias
        gain: float = SQRT2,  # He gain: sqrt(2) before lrelu, 1 for linear outputs
        lr_mul: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
        activation: str | None = None,  # "lrelu" (slope 0.2) or None for linear
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = gain / math.sqrt(in_features) * lr_mul
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, f"expected (N, {self.in_features}), got {tuple(x.shape)}"
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, w, b)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2)
        return x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class EqualizedConv2d(nn.Module):
    """2-D convolution (stride 1, 'same' padding) with equalized learning rate."""

    def __init__(
        self,
        *,
        in_channels: int,  # input feature maps
        out_channels: int,  # output feature maps
        kernel_size: int,  # odd square kernel (1 or 3)
        bias: bool = True,  # learn an additive per-channel bias
        gain: float = SQRT2,  # He gain: sqrt(2) before lrelu, 1 for ToRGB
        lr_mul: float = 1.0,  # learning-rate multiplier
        activation: str | None = None,  # "lrelu" (slope 0.2) or None
    ) -> None:
        super().__init__()
        assert kernel_size % 2 == 1, "kernel_size must be odd"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size) * lr_mul
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
        )
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.conv2d(x, w, b, padding=self.kernel_size // 2)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2)
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}, act={self.activation}"


class PixelNorm(nn.Module):
    """Normalize each sample's feature vector to unit RMS (applied to z)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] low-pass filter (normalized to sum 1), 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k)
        # Not persistent: a fixed constant, rebuilt at construction, kept out of the state dict.
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, f"expected (N, C, H, W), got {tuple(x.shape)}"
        c = x.shape[1]
        k = self.kernel.to(dtype=x.dtype).expand(c, 1, 3, 3)
        return F.conv2d(x, k, padding=1, groups=c)  # zero padding, as in the official blur2d


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling (Progressive GAN's upscale2d)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling (Progressive GAN's downscale2d)."""
    return F.avg_pool2d(x, 2)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned per-channel strength (init 0).

    ``noise_mode``: ``random`` draws fresh noise, ``const`` uses a buffer drawn once at
    construction from a fixed seed (deterministic sampling, saved in the state dict), ``none``
    adds nothing.
    """

    def __init__(
        self,
        *,
        channels: int,  # feature maps of the layer
        resolution: int,  # spatial size of the layer (for the const noise buffer)
        seed: int = 0,  # seed of the const noise buffer (one per layer)
    ) -> None:
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        self.weight = nn.Parameter(torch.zeros(channels))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=gen))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.channels and x.shape[2] == x.shape[3] == self.resolution, (
            f"expected (N, {self.channels}, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        )
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(dtype=x.dtype)
        else:
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return x + noise * self.weight.to(dtype=x.dtype).view(1, -1, 1, 1)


class AdaIN(nn.Module):
    """Adaptive instance normalization, StyleGAN form.

    Each channel is normalized to zero mean / unit variance per sample, then scaled and
    shifted by a learned equalized-lr affine map of w: ``style = A(w)``,
    ``scale = 1 + style[:, :C]``, ``bias = style[:, C:]`` (scale biased to 1).
    """

    def __init__(
        self,
        *,
        channels: int,  # feature maps to modulate
        w_dim: int,  # size of the style vector w
    ) -> None:
        super().__init__()
        self.channels = channels
        self.w_dim = w_dim
        self.affine = EqualizedLinear(in_features=w_dim, out_features=2 * channels, gain=1.0)

    def styles(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, bias), each (N, C)."""
        style = self.affine(w)
        return style[:, : self.channels] + 1.0, style[:, self.channels :]

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.channels, f"expected (N, {self.channels}, H, W), got {tuple(x.shape)}"
        assert w.shape == (x.shape[0], self.w_dim), (
            f"expected w of shape ({x.shape[0]}, {self.w_dim}), got {tuple(w.shape)}"
        )
        # Styles, statistics and modulation in fp32 under autocast (eps 1e-8 and the variance of a
        # bf16 map are not representable in 8 mantissa bits); without autocast these casts are no-ops.
        with fp32_region(x):
            scale, bias = self.styles(w.float())
            # F.instance_norm: fused kernel (about 1.5x faster than mean/rsqrt on CPU).
            y = F.instance_norm(x.float(), eps=1e-8)
            y = y * scale[:, :, None, None] + bias[:, :, None, None]
        return y.to(x.dtype)


class MinibatchStd(nn.Module):
    """Appends the average standard deviation over groups of samples as extra feature maps.

    Group size is ``gcd(min(group_size, N), N)``, so any batch size works (a batch of 6 with
    group 4 uses groups of 2; a batch of 1 gives a constant feature).
    """

    def __init__(
        self,
        *,
        group_size: int = 4,  # samples per group
        num_features: int = 1,  # channel splits, one statistic each
    ) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] % self.num_features == 0, (
            f"expected (N, C, H, W) with C divisible by {self.num_features}, got {tuple(x.shape)}"
        )
        n, c, h, w = x.shape
        g = math.gcd(min(self.group_size, n), n)
        f = self.num_features
        y = x.float().reshape(g, n // g, f, c // f, h, w)  # the statistic in fp32 under autocast
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # (M, F, c, H, W)
        y = y.mean(dim=(2, 3, 4))  # (M, F)
        y = y.reshape(n // g, f, 1, 1).repeat(g, 1, h, w)  # (N, F, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class ToRGB(nn.Module):
    """1x1 convolution from feature maps to RGB (linear, gain 1)."""

    def __init__(
        self,
        *,
        in_channels: int,  # feature maps of the block
        img_channels: int = 3,  # output channels
    ) -> None:
        super().__init__()
        self.conv = EqualizedConv2d(in_channels=in_channels, out_channels=img_channels, kernel_size=1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FromRGB(nn.Module):
    """1x1 convolution from RGB to feature maps, followed by leaky ReLU."""

    def __init__(
        self,
        *,
        out_channels: int,  # feature maps of the block
        img_channels: int = 3,  # input channels
    ) -> None:
        super().__init__()
        self.conv = EqualizedConv2d(
            in_channels=img_channels, out_channels=out_channels, kernel_size=1, activation="lrelu"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
