"""StyleGAN v1 generator and Progressive GAN discriminator, grown one resolution at a time.

Blocks are keyed by resolution (``synthesis.b64.conv0.weight``, ``b64.fromrgb...`` in D).
Every network is built for ``cfg.max_resolution`` and can run at any lower power-of-two
``resolution``, with ``alpha`` fading the newest resolution in (``alpha=1``: new path only).
"""

from __future__ import annotations

import torch
from torch import nn

from stylegan.config import ModelConfig
from stylegan.training.device import fp32_region
from stylegan.training.layers import (
    AdaIN,
    BatchShard,
    Blur,
    EqualizedConv2d,
    EqualizedLinear,
    FromRGB,
    MinibatchStd,
    NoiseInjection,
    PixelNorm,
    ToRGB,
    downsample2x,
    randn_rows,
    upsample2x,
)

NOISE_MODES = ("random", "const", "none")

# Style ranges of the classic mixing figure, by the resolutions they style.
_STYLE_RANGES = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, None)}


def _log2(x: int) -> int:
    return x.bit_length() - 1


def ws_for_resolution(resolution: int) -> int:
    """Number of style inputs (AdaIN layers) used up to and including ``resolution``."""
    return 2 * (_log2(resolution) - 1)


def style_layer_range(name: str, num_ws: int) -> range:
    """Indices of ``ws`` for the ``coarse`` (4-8), ``middle`` (16-32) or ``fine`` (64+) styles."""
    if name not in _STYLE_RANGES:
        raise ValueError(f"style range must be one of {list(_STYLE_RANGES)}, got {name!r}")
    lo, hi = _STYLE_RANGES[name]
    start = ws_for_resolution(lo // 2) if lo > 4 else 0
    stop = num_ws if hi is None else ws_for_resolution(hi)
    return range(min(start, num_ws), min(stop, num_ws))


def _is_fading(alpha: float | torch.Tensor) -> bool:
    """Whether the previous-resolution path is needed (a tensor alpha always takes both paths,
    so a compiled graph does not change with its value)."""
    if isinstance(alpha, torch.Tensor):
        return True
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha < 1.0


def _check_resolution(resolution: int | None, img_resolution: int) -> int:
    res = img_resolution if resolution is None else int(resolution)
    if res < 4 or res > img_resolution or res & (res - 1):
        raise ValueError(f"resolution must be a power of two in [4, {img_resolution}], got {resolution}")
    return res


class MappingNetwork(nn.Module):
    """z -> pixel norm -> ``num_layers`` equalized-lr FC layers (lrelu 0.2) -> w, broadcast to ws.

    Tracks the moving average of w (``w_avg``, the truncation centre) when asked to.
    """

    def __init__(
        self,
        *,
        z_dim: int,  # input latent size
        w_dim: int,  # output latent size
        num_ws: int,  # how many copies of w the synthesis network takes
        num_layers: int = 8,  # fully connected layers
        hidden: int | None = None,  # hidden width; None = w_dim
        lr_mul: float = 0.01,  # learning-rate multiplier of every layer
        w_avg_beta: float = 0.995,  # decay of the tracked average of w
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        hidden = w_dim if hidden is None else hidden
        self.norm = PixelNorm()
        widths = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for i in range(num_layers):
            layer = EqualizedLinear(
                in_features=widths[i], out_features=widths[i + 1], lr_mul=lr_mul, activation="lrelu"
            )
            self.add_module(f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def truncate(self, ws: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """Pull ws[:, :cutoff] toward ``w_avg`` by ``psi`` (psi=0: w_avg, 1: unchanged)."""
        assert ws.ndim == 3 and ws.shape[2] == self.w_dim, f"expected (N, L, {self.w_dim}), got {tuple(ws.shape)}"
        if psi == 1.0:
            return ws
        avg = self.w_avg.to(ws.dtype)
        if cutoff is None:
            return avg.lerp(ws, psi)
        head = avg.lerp(ws[:, :cutoff], psi)
        return torch.cat([head, ws[:, cutoff:]], dim=1)

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"expected z of shape (N, {self.z_dim}), got {tuple(z.shape)}"
        # fp32 under autocast, as the official code keeps it: a cheap network whose output w (and
        # w_avg, the truncation centre) every style depends on.
        with fp32_region(z):
            x = self.norm(z.float())
            for i in range(self.num_layers):
                x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self.truncate(ws, truncation_psi, truncation_cutoff)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: two styled layers and a ToRGB.

    4x4: learned constant (+ bias), noise, lrelu, AdaIN; conv, noise, lrelu, AdaIN.
    Above: upsample x2 + conv (fused into one transposed conv when ``fused_scale``), blur,
    bias, noise, lrelu, AdaIN; conv, noise, lrelu, AdaIN. The blur follows the conv and the bias
    follows the blur, as in the official G, so fused and unfused blocks compute the same thing.
    """

    def __init__(
        self,
        *,
        in_channels: int | None,  # channels of the previous block; None for the 4x4 block
        out_channels: int,  # channels of this block
        resolution: int,  # output size
        w_dim: int,  # style size
        img_channels: int = 3,  # ToRGB outputs
        blur: bool = True,  # low-pass after upsampling
        first_layer: int = 0,  # index of this block's first style input (also seeds const noise)
        fused_scale: bool = False,  # upsample inside conv0 (one transposed stride-2 conv)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.first_layer = first_layer
        if resolution == 4:
            self.const = nn.Parameter(torch.ones(1, out_channels, 4, 4))
            self.bias0 = nn.Parameter(torch.zeros(out_channels))
        else:
            assert in_channels is not None
            self.blur = Blur() if blur else None
            self.conv0 = EqualizedConv2d(
                in_channels=in_channels, out_channels=out_channels, kernel_size=3, resample="up",
                fused_scale=fused_scale,
            )
        self.noise0 = NoiseInjection(channels=out_channels, resolution=resolution, seed=first_layer)
        self.adain0 = AdaIN(channels=out_channels, w_dim=w_dim)
        self.conv1 = EqualizedConv2d(in_channels=out_channels, out_channels=out_channels, kernel_size=3)
        self.noise1 = NoiseInjection(channels=out_channels, resolution=resolution, seed=first_layer + 1)
        self.adain1 = AdaIN(channels=out_channels, w_dim=w_dim)
        self.torgb = ToRGB(in_channels=out_channels, img_channels=img_channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(
        self, x: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "random", shard: BatchShard | None = None
    ) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1] == 2, f"expected ws of shape (N, 2, w_dim), got {tuple(ws.shape)}"
        if self.resolution == 4:
            x = self.const.expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
            x = self.noise0(x, noise_mode, shard) + self.bias0.view(1, -1, 1, 1)
        else:
            assert x is not None and x.shape == (
                ws.shape[0],
                self.in_channels,
                self.resolution // 2,
                self.resolution // 2,
            ), (
                f"expected x of shape (N, {self.in_channels}, {self.resolution // 2}, {self.resolution // 2}), "
                f"got {None if x is None else tuple(x.shape)}"
            )
            if self.blur is not None:
                x = self.conv0.add_bias(self.blur(self.conv0(x, add_bias=False)))
            else:
                x = self.conv0(x)
            x = self.noise0(x, noise_mode, shard)
        x = self.adain0(self.act(x), ws[:, 0])
        x = self.noise1(self.conv1(x), noise_mode, shard)
        return self.adain1(self.act(x), ws[:, 1])


class SynthesisNetwork(nn.Module):
    """ws -> image, through the blocks b4, b8, ... up to ``resolution``, fading the last one in."""

    def __init__(
        self,
        *,
        cfg: ModelConfig,  # architecture (w_dim, max_resolution, channel widths, blur)
    ) -> None:
        super().__init__()
        self.w_dim = cfg.w_dim
        self.img_resolution = cfg.max_resolution
        self.img_channels = cfg.img_channels
        self.resolutions = cfg.resolutions
        self.num_ws = cfg.num_ws
        for i, res in enumerate(self.resolutions):
            block = SynthesisBlock(
                in_channels=cfg.channels(res // 2) if res > 4 else None,
                out_channels=cfg.channels(res),
                resolution=res,
                w_dim=cfg.w_dim,
                img_channels=cfg.img_channels,
                blur=cfg.blur,
                first_layer=2 * i,
                fused_scale=cfg.fused_at(res),
            )
            self.add_module(f"b{res}", block)

    def forward(
        self,
        ws: torch.Tensor,
        resolution: int | None = None,
        alpha: float | torch.Tensor = 1.0,
        noise_mode: str = "random",
        shard: BatchShard | None = None,  # several processes share the batch: see layers.BatchShard
    ) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), (
            f"expected ws of shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}"
        )
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        res = _check_resolution(resolution, self.img_resolution)
        fading = res > 4 and _is_fading(alpha)
        x: torch.Tensor | None = None
        prev: torch.Tensor | None = None
        for i, r in enumerate(self.resolutions):
            if r > res:
                break
            prev = x
            x = getattr(self, f"b{r}")(x, ws[:, 2 * i : 2 * i + 2], noise_mode, shard)
        assert x is not None
        img = getattr(self, f"b{res}").torgb(x)
        if fading:
            assert prev is not None
            old = upsample2x(getattr(self, f"b{res // 2}").torgb(prev))
            img = old + (img - old) * alpha
        return img


class Generator(nn.Module):
    """Mapping + synthesis, with style mixing regularization and the truncation trick."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.w_dim = cfg.w_dim
        self.num_ws = cfg.num_ws
        self.img_resolution = cfg.max_resolution
        self.img_channels = cfg.img_channels
        self.mapping = MappingNetwork(
            z_dim=cfg.z_dim,
            w_dim=cfg.w_dim,
            num_ws=cfg.num_ws,
            num_layers=cfg.mapping_layers,
            hidden=cfg.mapping_width,
            lr_mul=cfg.mapping_lr_mul,
            w_avg_beta=cfg.w_avg_beta,
        )
        self.synthesis = SynthesisNetwork(cfg=cfg)

    def mix_styles(self, ws: torch.Tensor, ws2: torch.Tensor, resolution: int, mixing_prob: float) -> torch.Tensor:
        """With probability ``mixing_prob`` take layers >= a random crossover (among the layers
        active at ``resolution``) from ``ws2``. Tensor ops only: the same random draws happen
        whatever the outcome, and nothing is read back to Python."""
        cur = ws_for_resolution(resolution)
        dev = ws.device
        mix = torch.rand((), device=dev) < mixing_prob
        crossover = torch.randint(1, cur, (), device=dev)
        cutoff = torch.where(mix, crossover, torch.full_like(crossover, self.num_ws))
        keep_first = torch.arange(self.num_ws, device=dev) < cutoff
        return torch.where(keep_first.view(1, -1, 1), ws, ws2)

    def forward(
        self,
        z: torch.Tensor,
        *,
        resolution: int | None = None,
        alpha: float | torch.Tensor = 1.0,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool = False,
        mixing_prob: float = 0.0,
        shard: BatchShard | None = None,  # this process's rows of a global batch (torchrun); None = all
    ) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"expected z of shape (N, {self.z_dim}), got {tuple(z.shape)}"
        res = _check_resolution(resolution, self.img_resolution)
        ws = self.mapping(z, update_w_avg=update_w_avg)
        if mixing_prob > 0.0:
            z2 = randn_rows(z.shape[0], z.shape[1], shard=shard, device=z.device, dtype=z.dtype)
            ws2 = self.mapping(z2)
            ws = self.mix_styles(ws, ws2, res, mixing_prob)
        ws = self.mapping.truncate(ws, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, resolution=res, alpha=alpha, noise_mode=noise_mode, shard=shard)


class DiscriminatorBlock(nn.Module):
    """One resolution of D: FromRGB (used when this is the input resolution) and two convs.

    Above 4x4: conv 3x3, blur, conv 3x3 + 2x2 average pool (fused into one stride-2 conv when
    ``fused_scale``), lrelu. At 4x4: minibatch stddev, conv 3x3, dense to C, dense to one logit.
    """

    def __init__(
        self,
        *,
        in_channels: int,  # channels at this resolution
        out_channels: int,  # channels after the block (4x4: width of the dense layer)
        resolution: int,  # input size
        img_channels: int = 3,  # FromRGB inputs
        blur: bool = True,  # low-pass before downsampling
        mbstd_group_size: int = 4,  # minibatch stddev group (4x4 block only)
        mbstd_num_features: int = 1,
        fused_scale: bool = False,  # downsample inside conv1 (one stride-2 conv)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.fromrgb = FromRGB(out_channels=in_channels, img_channels=img_channels)
        if resolution == 4:
            self.mbstd = MinibatchStd(group_size=mbstd_group_size, num_features=mbstd_num_features)
            self.conv = EqualizedConv2d(
                in_channels=in_channels + mbstd_num_features,
                out_channels=in_channels,
                kernel_size=3,
                activation="lrelu",
            )
            self.fc = EqualizedLinear(in_features=in_channels * 16, out_features=out_channels, activation="lrelu")
            self.out = EqualizedLinear(in_features=out_channels, out_features=1, gain=1.0)
        else:
            self.conv0 = EqualizedConv2d(
                in_channels=in_channels, out_channels=in_channels, kernel_size=3, activation="lrelu"
            )
            self.blur = Blur() if blur else None
            self.conv1 = EqualizedConv2d(
                in_channels=in_channels, out_channels=out_channels, kernel_size=3, resample="down",
                fused_scale=fused_scale,
            )
            self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1:] == (self.in_channels, self.resolution, self.resolution), (
            f"expected (N, {self.in_channels}, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        )
        if self.resolution == 4:
            x = self.conv(self.mbstd(x))
            x = self.fc(x.flatten(1))
            return self.out(x)
        x = self.conv0(x)
        if self.blur is not None:
            x = self.blur(x)
        return self.act(self.conv1(x))


class Discriminator(nn.Module):
    """Progressive GAN discriminator mirroring the synthesis network; image -> logit (N, 1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_resolution = cfg.max_resolution
        self.img_channels = cfg.img_channels
        self.resolutions = cfg.resolutions
        for res in self.resolutions:
            block = DiscriminatorBlock(
                in_channels=cfg.channels(res),
                # The 4x4 block's dense layer has the stage-0 width, as in the official D.
                out_channels=cfg.channels(res // 2),
                resolution=res,
                img_channels=cfg.img_channels,
                blur=cfg.blur,
                mbstd_group_size=cfg.mbstd_group_size,
                mbstd_num_features=cfg.mbstd_num_features,
                fused_scale=cfg.fused_at(res),
            )
            self.add_module(f"b{res}", block)

    def forward(
        self,
        img: torch.Tensor,
        *,
        resolution: int | None = None,
        alpha: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        res = _check_resolution(resolution, self.img_resolution)
        assert img.ndim == 4 and img.shape[1:] == (self.img_channels, res, res), (
            f"expected images of shape (N, {self.img_channels}, {res}, {res}), got {tuple(img.shape)}"
        )
        block = getattr(self, f"b{res}")
        x = block(block.fromrgb(img))
        if res > 4 and _is_fading(alpha):
            old = getattr(self, f"b{res // 2}").fromrgb(downsample2x(img))
            x = old + (x - old) * alpha
        r = res // 2
        while r >= 4:
            x = getattr(self, f"b{r}")(x)
            r //= 2
        return x
