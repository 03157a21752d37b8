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

from stylegan.training.device import fp32_region

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
    """2-D convolution ('same' padding) with equalized learning rate, optionally resampling x2.

    ``resample="up"``: nearest x2 upsampling, then the conv; ``"down"``: the conv, then 2x2
    average pooling. With ``fused_scale`` both happen in one stride-2 (transposed) convolution
    whose (k+1)x(k+1) kernel is the kxk one summed over its four 1-pixel shifts (averaged, for
    down), as the official StyleGAN's ``upscale2d_conv2d`` / ``conv2d_downscale2d`` do: the
    same result (zero padding included) for 2.25x fewer multiply-adds with a 3x3 kernel, and
    the same parameters, so a state dict loads either way.
    """

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
        resample: str | None = None,  # None, "up" (x2 before the conv) or "down" (/2 after it)
        fused_scale: bool = False,  # resample inside one stride-2 conv (needs resample)
    ) -> None:
        super().__init__()
        assert kernel_size % 2 == 1, "kernel_size must be odd"
        assert resample in (None, "up", "down"), f"resample must be None, 'up' or 'down', got {resample!r}"
        assert not (fused_scale and resample is None), "fused_scale needs resample='up' or 'down'"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.resample = resample
        self.fused_scale = fused_scale
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size) * lr_mul
        self.bias_gain = lr_mul

    def add_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's bias, for callers that filter the conv output first (``forward(add_bias=False)``)."""
        assert self.bias is not None
        return x + (self.bias * self.bias_gain).to(x.dtype).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
        )
        assert add_bias or self.activation is None, "the bias must come before the activation"
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None and add_bias else None
        pad = self.kernel_size // 2
        if self.fused_scale:
            # Sum of the four 1-pixel shifts of the kernel = nearest-upsample (or 2x2-box) then conv.
            w = F.pad(w, [1, 1, 1, 1])
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            if self.resample == "up":
                # conv_transpose2d is the adjoint of conv2d's cross-correlation: flip the kernel
                # to get upsample-then-correlate, and lay it out as (in, out, kh, kw).
                x = F.conv_transpose2d(x, w.flip(2, 3).transpose(0, 1), b, stride=2, padding=pad)
            else:
                x = F.conv2d(x, w * 0.25, b, stride=2, padding=pad)
        elif self.resample == "up":
            x = F.conv2d(upsample2x(x), w, b, padding=pad)
        elif self.resample == "down":
            x = downsample2x(F.conv2d(x, w, b, padding=pad))
        else:
            x = F.conv2d(x, w, b, padding=pad)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2)
        return x

    def extra_repr(self) -> str:
        scale = f", {self.resample}{' fused' if self.fused_scale else ''}" if self.resample else ""
        return f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}{scale}, act={self.activation}"


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


# One process's share of a batch that several processes compute together (torchrun): the
# global batch size and the rows of it this process computes. Random inputs are drawn for the
# global batch and these rows kept, so N processes draw exactly what one would
# (``stylegan.training.distributed.shard_rows`` picks the rows).
BatchShard = tuple[int, torch.Tensor]


def randn_rows(
    n: int, *size: int, shard: BatchShard | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``torch.randn(n, *size)`` from the global RNG; with ``shard``, this process's n rows of the
    global batch's draw (the RNG advances by the global batch on every process alike)."""
    if shard is None:
        return torch.randn(n, *size, device=device, dtype=dtype)
    total, rows = shard
    assert rows.shape == (n,), f"shard has {tuple(rows.shape)} rows for a batch of {n}"
    return torch.randn(total, *size, device=device, dtype=dtype)[rows.to(device)]


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

    def forward(self, x: torch.Tensor, noise_mode: str = "random", shard: BatchShard | None = None) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.channels and x.shape[2] == x.shape[3] == self.resolution, (
            f"expected (N, {self.channels}, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        )
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            noise = randn_rows(x.shape[0], 1, x.shape[2], x.shape[3], shard=shard, device=x.device, dtype=x.dtype)
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
            xf = x.float()  # keeps x's memory format (bf16 / fp16 maps under autocast included)
            if _norm_keeps_channels_last(xf):
                y = instance_norm_channels_last(xf, eps=1e-8)
            else:
                # F.instance_norm: fused kernel (about 1.5x faster than mean/rsqrt on CPU).
                y = F.instance_norm(xf, eps=1e-8)
            y = y * scale[:, :, None, None] + bias[:, :, None, None]
        return y.to(x.dtype)


def _norm_keeps_channels_last(x: torch.Tensor) -> bool:
    """Whether AdaIN normalizes ``x`` in its own (channels_last) layout rather than by F.instance_norm.

    Off the CPU only: CPU runs, channels_last ones included (params.yaml), are pinned to
    F.instance_norm's bits. Strictly channels_last: a map that is also contiguous NCHW (1x1,
    or C = 1) gains nothing.
    """
    return x.device.type != "cpu" and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def instance_norm_channels_last(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.instance_norm(x, eps=eps)`` in x's memory format (to float rounding).

    F.instance_norm makes a channels_last input contiguous and returns NCHW, which the next
    channels_last conv converts back: two extra full copies of the map per layer. Per-(N, C)
    reductions and broadcast ops keep channels_last instead.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)  # biased, as instance_norm
    return (x - mean) * torch.rsqrt(var + eps)


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
