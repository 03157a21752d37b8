"""Projected discriminator (Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021).

D looks at images through a frozen pretrained feature network: EfficientNet-Lite0 (the network
``stylegan/training/effnet.py`` already loads; the official code uses timm's
``tf_efficientnet_lite0``, converted from the same TensorFlow checkpoint), tapped at the ends of
its stride-4, 8, 16 and 32 stages (after blocks 2, 4, 10 and 15 of the flat block list: 24, 40,
112 and 320 channels). Fixed random 1x1 convolutions mix the channels of each tap (CCM, widths
c, 2c, 4c, 8c) and a fixed random top-down path mixes the scales (CSM: add the coarser level,
upsample x2 bilinearly, 1x1 conv halving the channels; the official ``proj_type=2`` with
``expand=True``), so the four maps reaching the heads have c, c, 2c, 4c channels at strides 2, 4,
8 and 16 of the input. One trained patch head per map (the official ``SingleDisc``: spectral-norm
4x4 stride-2 convs + norm + LeakyReLU(0.2), then a spectral-norm conv to one channel); the logits
of all heads are concatenated, (N, P).

Only the heads train. The feature network and the projections are buffers, not parameters: no
optimizer, no gradient all-reduce and no ``requires_grad_(True)`` of the Trainer can touch
them, and the module keeps them in eval mode whatever ``.train()`` asks. The projections are
drawn from a generator seeded by ``model.projected_seed`` and saved in the state dict (exact
resume); the pretrained weights are rebuilt from the installed package at construction
(non-persistent buffers: a checkpoint does not carry 13 MB of ImageNet weights), with their batch
norms folded into the convolutions (frozen statistics, so the same function, a third less work).

Differences from the official code, and why:
- Input size: every image is resized (bilinear, no antialias, differentiable) to
  ``model.projected_input`` (official: 224 for datasets below 224 px). The heads were written for a
  256-px input (their depths are fixed: 4, 3, 2, 1 blocks); for a smaller input a head stops at a
  4x4 map (and its last conv shrinks to the map when the map is smaller), so any multiple of 32
  from 32 up works. At 224 the architecture is the official one (4x4 logits per head).
- Head widths: the official table (64..512 channels) times ``projected_channels / 64``.
- Batch norm in the heads (``projected_norm: batch``, the official) uses the statistics of the
  global batch: under torchrun the per-rank sums are all-reduced (with autograd), so N processes
  compute what one process computes (``group`` and ``none`` need no collective).
- Augmentation (the official DiffAugment ``color,translation,cutout`` inside D) is the trainer's
  ``train.augment`` pipe, drawn from the checkpointed ``aug_gen`` (DiffAugment uses the global RNG).
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from stylegan.config import ConfigError, ModelConfig
from stylegan.training import effnet
from stylegan.training.networks import Discriminator

# Flat block indices of EfficientNet-Lite0 after which the pyramid taps (the last block of its
# stride-4, 8, 16, 32 stages; the official code's timm stages [0:2], [2:3], [3:5], [5:9]).
TAPS: tuple[int, ...] = (2, 4, 10, 15)
TAP_CHANNELS: tuple[int, ...] = (24, 40, 112, 320)
# The official heads' widths by nominal map size, written for a 256-px input and a CCM width of 64.
_HEAD_WIDTHS: dict[int, int] = {128: 64, 64: 64, 32: 128, 16: 256, 8: 512}
_NOMINAL_INPUT = 256
_HEAD_BLOCKS = (4, 3, 2, 1)  # the official depths (head i: 128 >> i down to 8 at the nominal input)


# -- the frozen feature network ----------------------------------------------------------------


def _params_to_buffers(module: nn.Module, persistent: bool) -> None:
    """Replace every parameter of ``module`` by a buffer of the same name (same tensor values)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            if p is not None:
                m.register_buffer(name, p.detach().clone(), persistent=persistent)


@functools.lru_cache(maxsize=1)
def _pretrained() -> effnet.EfficientNetLite0:
    # Read once per process (about 0.1 s); every pyramid deep-copies it.
    return effnet.fold_batchnorm(effnet.load_effnet_lite0())


class FeaturePyramid(nn.Module):
    """Frozen EfficientNet-Lite0 up to block 15: effnet-preprocessed images -> four maps at strides 4..32."""

    def __init__(self) -> None:
        super().__init__()
        net = copy.deepcopy(_pretrained())
        self.stem = net._conv_stem  # its batch norm is folded in (net._bn0 is an identity now)
        self.blocks = nn.ModuleList(net._blocks[: TAPS[-1] + 1])
        _params_to_buffers(self, persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> FeaturePyramid:
        return super().train(False)  # always eval: frozen statistics, whatever the owner asks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert x.ndim == 4 and x.shape[1] == 3, f"expected (N, 3, H, W), got {tuple(x.shape)}"
        x = F.relu6(self.stem(x))
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                out.append(x)
        return out


class RandomProjection(nn.Module):
    """Fixed random cross-channel (CCM) and cross-scale (CSM) mixing; buffers drawn from ``seed``."""

    def __init__(
        self,
        *,
        in_channels: tuple[int, ...] = TAP_CHANNELS,  # channels of the four taps, fine to coarse
        width: int = 64,  # CCM width c: the taps become c, 2c, 4c, 8c channels
        seed: int = 0,  # seed of the random weights (the same seed, the same projection)
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        ccm = [width, 2 * width, 4 * width, 8 * width]
        # CSM level i takes level i's CCM output (plus the level above) and halves the channels;
        # the finest level keeps its width (the official "last refinenet does not expand").
        csm = [ccm[0], ccm[0], ccm[1], ccm[2]]
        for i, (cin, cout) in enumerate(zip(in_channels, ccm, strict=True)):
            self._fixed_conv(f"ccm{i}", cin, cout, gen)
        for i in (3, 2, 1, 0):  # drawn in the order the official code builds them
            self._fixed_conv(f"csm{i}", ccm[i], csm[i], gen)
        self.out_channels = tuple(csm)

    def _fixed_conv(self, name: str, cin: int, cout: int, gen: torch.Generator) -> None:
        # torch's Conv2d init (kaiming_uniform with a = sqrt(5): U(+-1/sqrt(fan_in)), bias the same).
        bound = 1.0 / math.sqrt(cin)
        self.register_buffer(f"{name}_weight", (torch.rand(cout, cin, 1, 1, generator=gen) * 2 - 1) * bound)
        self.register_buffer(f"{name}_bias", (torch.rand(cout, generator=gen) * 2 - 1) * bound)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        assert len(feats) == 4, f"expected 4 feature maps, got {len(feats)}"
        mixed = [self._conv(f"ccm{i}", f) for i, f in enumerate(feats)]
        out: list[torch.Tensor] = [torch.empty(0)] * 4
        y = None
        for i in (3, 2, 1, 0):  # top-down: coarsest first
            y = mixed[i] if y is None else y + mixed[i]
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
            y = self._conv(f"csm{i}", y)
            out[i] = y
        return out


# -- the trained heads -------------------------------------------------------------------------


class SNConv2d(nn.Module):
    """Conv2d with spectral normalisation (one power iteration per training forward, as
    ``torch.nn.utils.spectral_norm``), written out: the state dict holds ``weight``, ``u``, ``v``."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,  # in_channels = depthwise
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups
        fan_in = in_channels // groups * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)  # torch's Conv2d init, from the global RNG (the Trainer seeds it)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None
        self.register_buffer("u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer("v", F.normalize(torch.randn(fan_in), dim=0, eps=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(self.weight.shape[0], -1)
        u, v = self.u, self.v
        if self.training:
            with torch.no_grad():
                v = F.normalize(w.t().mv(u), dim=0, eps=1e-12)
                u = F.normalize(w.mv(v), dim=0, eps=1e-12)
                self.u.copy_(u)
                self.v.copy_(v)
        sigma = torch.dot(u, w.mv(v))
        return F.conv2d(x, self.weight / sigma, self.bias, self.stride, self.padding, 1, self.groups)


class GlobalBatchNorm2d(nn.Module):
    """BatchNorm2d (eps 1e-5, momentum 0.1) whose training statistics are the global batch's.

    In a single process it is ``F.batch_norm``. Under torchrun (the default process group
    initialised, more than one rank) the per-rank sums are all-reduced with autograd, so every
    rank normalises by the statistics of all ranks' rows together, the backward carries the
    gradients of the other ranks' losses, and the running statistics stay equal on every rank:
    N processes compute what one does (up to summation order). Statistics in fp32."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        xf = x.float()
        if not self.training or world == 1:
            y = F.batch_norm(xf, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                             self.momentum, self.eps)
            return y.to(x.dtype)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware: backward all-reduces too

        n = xf.numel() // xf.shape[1] * world
        mean = all_reduce(xf.sum(dim=(0, 2, 3))) / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.square().sum(dim=(0, 2, 3))) / n
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * (n / max(n - 1, 1)), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return GlobalBatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(channels // 2, 1), channels)  # the official NormLayer('group')
    return nn.Identity()


class DownBlock(nn.Module):
    """Halve the map: SN conv 4x4 stride 2 (separable: SN depthwise 3x3 + SN pointwise 1x1, then a
    2x2 average pool) + norm + LeakyReLU(0.2), as the official ``DownBlock``."""

    def __init__(self, *, in_channels: int, out_channels: int, separable: bool, norm: str) -> None:
        super().__init__()
        if separable:
            self.conv = nn.Sequential(
                SNConv2d(in_channels=in_channels, out_channels=in_channels, kernel_size=3, padding=1,
                         groups=in_channels, bias=False),
                SNConv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1, bias=False),
            )
        else:
            # The official conv has a bias; before a batch norm it cancels exactly (its gradient is round-off,
            # which Adam turns into lr-sized steps of random sign), so it is left out there.
            self.conv = SNConv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=4, stride=2,
                                 padding=1, bias=norm != "batch")
        self.norm = _norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.AvgPool2d(2) if separable else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class PatchHead(nn.Module):
    """One scale's discriminator: down blocks to a small map, then an SN conv to one channel (patch logits)."""

    def __init__(
        self,
        *,
        in_channels: int,  # channels of the projected map
        size: int,  # its side at this input size
        nominal: int,  # its side at the official 256-px input (which the width table is written for)
        max_blocks: int,  # the official depth of this head
        width_mul: float,  # projected_channels / 64
        separable: bool,
        norm: str,
    ) -> None:
        super().__init__()
        self.in_channels, self.size = in_channels, size
        blocks, c = [], in_channels
        while len(blocks) < max_blocks and size // 2 >= 4:  # the official depth, stopping at a 4x4 map
            out = max(round(_HEAD_WIDTHS[nominal // 2] * width_mul), 1)
            blocks.append(DownBlock(in_channels=c, out_channels=out, separable=separable, norm=norm))
            c, size, nominal = out, size // 2, nominal // 2
        self.blocks = nn.Sequential(*blocks)
        k = min(4, size)
        self.out = SNConv2d(in_channels=c, out_channels=1, kernel_size=k, bias=False)
        self.num_logits = (size - k + 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (self.in_channels, self.size, self.size), (
            f"expected (N, {self.in_channels}, {self.size}, {self.size}), got {tuple(x.shape)}"
        )
        return self.out(self.blocks(x)).flatten(1)


# -- the discriminators ------------------------------------------------------------------------


class ProjectedDiscriminator(nn.Module):
    """Image at G's current resolution -> patch logits (N, ``num_logits``) of four heads."""

    kind = "projected"  # which loss family build_loss gives it

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_size = cfg.projected_input
        self.features = FeaturePyramid()
        self.projection = RandomProjection(width=cfg.projected_channels, seed=cfg.projected_seed)
        S = cfg.projected_input
        self.heads = nn.ModuleList(
            PatchHead(in_channels=c, size=S >> (i + 1), nominal=_NOMINAL_INPUT >> (i + 1), max_blocks=_HEAD_BLOCKS[i],
                      width_mul=cfg.projected_channels / 64, separable=cfg.projected_separable,
                      norm=cfg.projected_norm)
            for i, c in enumerate(self.projection.out_channels)
        )
        self.num_logits = sum(h.num_logits for h in self.heads)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.features.train(False)  # (FeaturePyramid refuses anyway; said here too)
        return self

    def forward(
        self,
        img: torch.Tensor,
        *,
        resolution: int | None = None,  # G's current resolution (the image's side)
        alpha: float | torch.Tensor = 1.0,  # unused: the image is already faded (G's output, the blended reals)
    ) -> torch.Tensor:
        res = img.shape[-1] if resolution is None else resolution
        assert img.ndim == 4 and img.shape[1:] == (3, res, res), (
            f"expected images of shape (N, 3, {res}, {res}), got {tuple(img.shape)}"
        )
        x = img
        if res != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=False)
        # [-1, 1] -> pixels 0..255 -> effnet.preprocess's (p - 127) / 128.
        x = ((x + 1) * 127.5 - effnet.PIXEL_MEAN) / effnet.PIXEL_STD
        maps = self.projection(self.features(x))
        return torch.cat([head(m) for head, m in zip(self.heads, maps, strict=True)], dim=1)


class DualDiscriminator(nn.Module):
    """``both``: the progan D and the projected D side by side (Kumari et al., CVPR 2022).

    One module, so the Trainer keeps one D, one optimizer and one checkpoint entry; the loss
    (``losses.SumLoss``) calls each part with ``part=``. Without ``part`` the logits of the two are
    concatenated (N, 1 + P), for tools that just run D."""

    kind = "both"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.progan = Discriminator(cfg)  # first: the same init as a progan run's D
        self.projected = ProjectedDiscriminator(cfg)

    def forward(
        self,
        img: torch.Tensor,
        *,
        resolution: int | None = None,
        alpha: float | torch.Tensor = 1.0,
        part: str | None = None,  # "progan" | "projected"; None = both, concatenated
    ) -> torch.Tensor:
        if part == "progan":
            return self.progan(img, resolution=resolution, alpha=alpha)
        if part == "projected":
            return self.projected(img, resolution=resolution, alpha=alpha)
        assert part is None, f"part must be progan, projected or None, got {part!r}"
        return torch.cat([self.progan(img, resolution=resolution, alpha=alpha),
                          self.projected(img, resolution=resolution, alpha=alpha)], dim=1)


def build_projected(cfg: ModelConfig) -> nn.Module:
    """The ``projected`` or ``both`` D of ``cfg`` (``build_discriminator``)."""
    if cfg.discriminator not in ("projected", "both"):
        raise ConfigError(f"model.discriminator {cfg.discriminator!r} is not projected or both")
    try:
        effnet.weights_path()
    except effnet.MissingWeightsError as exc:
        raise ConfigError(
            f"model.discriminator {cfg.discriminator} needs the EfficientNet-Lite0 weights: {exc}"
        ) from exc
    return ProjectedDiscriminator(cfg) if cfg.discriminator == "projected" else DualDiscriminator(cfg)


def d_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """StyleGAN-XL's blur of D's input: a separable filter 2^-(t/sigma)^2 over |t| <= floor(3 sigma),
    normalised, zero padding (its ``upfirdn2d.filter2d``); sigma <= 1/3 is the identity."""
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    f = (t / sigma).square().neg().exp2()
    f = (f / f.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(x, f.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(x, f.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    """The D that ``cfg.discriminator`` names: ``progan`` (``networks.Discriminator``), ``projected`` or
    ``both`` (the EfficientNet-Lite0 weights are read only for those two)."""
    if cfg.discriminator == "progan":
        return Discriminator(cfg)
    return build_projected(cfg)
