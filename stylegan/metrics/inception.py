"""The FID variant of Inception-v3, for standard FID/KID when its weights are on disk.

The weights are the TensorFlow FID graph converted to a PyTorch state dict
(``pt_inception-2015-12-05-6726825d.pth``, as the standard PyTorch FID tools name and cache
it). Nothing is downloaded here: the path comes from ``EvaluateConfig.inception_weights`` or
the torch hub cache; without either the caller skips FID with one line.

The architecture is torchvision's Inception3 with the FID graph's differences: average
pools that exclude padding, max pooling in the last block's pool branch, 1008 classes.
Input: uint8 images, resized to 299 with TF1's ``tf.image.resize_bilinear`` (reproduced
exactly by ``tf1_resize_bilinear``: the FID graph's own ``ResizeBilinear`` node), then
``(x - 128) / 128`` as the graph's ``Sub``/``Mul`` nodes do; output: the 2048-d pool. This is
the protocol of the reference TTUR FID code that StyleGAN and published Pokémon FIDs use.
``F.interpolate(..., align_corners=False)`` samples at half-pixel centres, which TF1 did not,
so its FIDs differ from the reference by a few tenths to whole points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylegan.training.effnet import MissingWeightsError, batched_features, load_state_dict_file

WEIGHTS_GLOB = "pt_inception-2015-12-05-*.pth"
INPUT_SIZE = 299
FEATURE_DIM = 2048


def find_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The configured file, else the torch hub cache's; MissingWeightsError when neither exists."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise MissingWeightsError(f"evaluate.inception_weights points to {path}, which {what}")
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, ~/.cache/...
    found = sorted(hub.glob(WEIGHTS_GLOB)) if hub.is_dir() else []
    if not found:
        raise MissingWeightsError(
            f"no Inception weights ({WEIGHTS_GLOB}) in {hub} and evaluate.inception_weights is unset"
        )
    return found[0]


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(align_corners=False)`` (half_pixel_centers=False), in float32.

    TF1's legacy sampling: output pixel ``i`` reads source coordinate ``i * in / out`` (no
    half-pixel offset, no antialias), between ``floor`` and ``min(ceil, in - 1)``; the lerp
    order (top, bottom, then between them) is TF's, so results agree to float32 rounding.
    """
    assert x.ndim == 4, f"expected (N, C, H, W), got {tuple(x.shape)}"
    x = x.float()
    out_h, out_w = size

    def weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
        src = torch.arange(out_size, dtype=torch.float32, device=x.device) * scale.to(x.device)
        floor = torch.floor(src)
        lower = floor.long().clamp(min=0)
        upper = torch.ceil(src).long().clamp(max=in_size - 1)
        return lower, upper, src - floor

    y0, y1, y_lerp = weights(x.shape[2], out_h)
    x0, x1, x_lerp = weights(x.shape[3], out_w)
    top_rows, bottom_rows = x[:, :, y0], x[:, :, y1]
    top_left, top_right = top_rows[..., x0], top_rows[..., x1]
    bottom_left, bottom_right = bottom_rows[..., x0], bottom_rows[..., x1]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp[:, None]


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the FID graph's input: TF1 bilinear to 299, then ``(x - 128) / 128``."""
    x = tf1_resize_bilinear(images.float(), (INPUT_SIZE, INPUT_SIZE))
    return (x - 128.0) / 128.0


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # The FID graph averages over valid pixels only (torchvision counts the padding).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels: int, *, max_pool: bool) -> None:  # max_pool: the FID graph's last block
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TF FID graph; ``features`` returns the 2048-d pool."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, 1008)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input in [-1, 1], (N, 3, 299, 299) -> (N, 2048)."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected (N, 3, H, W), got {tuple(x.shape)}"
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def load_fid_inception(path: str | os.PathLike, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID network in eval mode; an unreadable or wrong file raises UnusableWeightsError (FID is skipped)."""
    net = FIDInceptionV3()
    load_state_dict_file(net, path, "FID Inception")
    return net.eval().requires_grad_(False).to(device)


class InceptionFeatureExtractor:
    """Batched 2048-d Inception pool features; uint8 images in, float64 numpy out."""

    name = "inception"

    def __init__(
        self,
        *,
        weights: str | os.PathLike | None = None,  # None = look in the torch hub cache
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.weights = find_weights(weights)
        self.net = load_fid_inception(self.weights, self.device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return batched_features(images, self.batch_size, self.device, preprocess, self.net.features, FEATURE_DIM)
