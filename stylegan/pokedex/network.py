"""The Pokédex network: a small CNN that names the species of a 32x32 sprite.

It is the project's in-domain yardstick. Its penultimate features (``features``) are the space
the ``*_dex`` metrics live in, and its softmax gives each sample's "looks like" list. An
ImageNet network cannot tell flat colours, outlines and white ground apart from noise, so it
makes a poor judge of sprites; a network that had to tell 649 species apart learned those cues.

Plain conv + batch norm + ReLU, four widths, global average pooling: about 0.4 M parameters and
25 MFLOP per image, so it trains on the sprites in minutes on two CPU cores. Inputs are uint8 or
[-1, 1] images of any size; they are resized to ``resolution`` by area (down) or bilinear (up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 32  # the prepared sprites' CPU-profile size; other sizes are resized to it


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class DexNet(nn.Module):
    """Sprite -> species logits; ``features`` is the pooled penultimate layer (``feature_dim``)."""

    def __init__(self, num_classes: int, width: int = 16, resolution: int = RESOLUTION) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a Pokédex needs at least 2 species, got {num_classes}")
        self.num_classes, self.width, self.resolution = num_classes, width, resolution
        w = [width, width * 2, width * 4, width * 8]
        self.stages = nn.ModuleList([_block(3, w[0]), _block(w[0], w[1]), _block(w[1], w[2]), _block(w[2], w[3])])
        self.feature_dim = w[3]
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(w[3], num_classes)

    @staticmethod
    def to_input(images: torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
        """uint8 (0..255) or float [-1, 1] NCHW images -> float [-1, 1] at ``resolution``."""
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-1] > resolution:
            x = F.adaptive_avg_pool2d(x, resolution)  # area: what prepare does
        elif x.shape[-1] < resolution:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.to_input(images, self.resolution)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


def random_network(num_classes: int = 2, width: int = 16, seed: int = 0) -> DexNet:
    """The same architecture at a seeded random init (eval mode): the ImageNet-free and
    training-free feature space of ``fd_random`` (StyleGAN-XL's random-network FD)."""
    gen = torch.Generator().manual_seed(seed)
    net = DexNet(num_classes, width)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                # He-normal from our own generator: torch's default init draws from the global RNG.
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    return net.eval().requires_grad_(False)
