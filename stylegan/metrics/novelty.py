"""Novelty: are the generated Pokémon new, or copies of training images?

For a sample, its nearest training images in pixel space and in feature space, drawn as
"sample | 3 nearest" rows. The memorization score is the share of samples whose nearest
training image is closer than a threshold learned from the training set itself: a low
percentile of the distances from training images to their nearest *other* training image.
A sample closer to a training image than almost any training image is to its neighbour is
a copy, not a new creature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from stylegan.metrics.stats import nearest_neighbours, self_nn_distances

PIXEL_RESOLUTION = 32  # pixel-space distances on area-downsampled images: 16x less work at 64px, same copies


def pixel_vectors(images: np.ndarray, resolution: int = PIXEL_RESOLUTION) -> np.ndarray:
    """uint8 (N, 3, R, R) -> float32 (N, 3 * r * r) in [0, 1], area-downsampled to at most ``resolution``."""
    x = torch.as_tensor(images).float() / 255.0
    if x.shape[-1] > resolution:
        x = F.adaptive_avg_pool2d(x, resolution)
    return x.reshape(len(x), -1).numpy()


@dataclass(frozen=True)
class Memorization:
    score: float  # share of samples flagged as copies
    threshold: float  # distance below which a sample counts as a copy
    nn_distance: np.ndarray  # (N, k) distances to the nearest training images, closest first
    nn_index: np.ndarray  # (N, k) their rows in the training set


def memorization(
    samples: np.ndarray,  # (N, D) sample vectors (features or pixels)
    reference: np.ndarray,  # (M, D) training vectors
    *,
    percentile: float = 1.0,  # of training self-distances; the threshold
    k: int = 3,  # neighbours kept per sample (for the figure)
    self_queries: int = 1000,  # training images whose self-distance is measured (bounds the cost)
    seed: int = 0,
) -> Memorization:
    threshold = float(np.percentile(self_nn_distances(reference, self_queries, seed), percentile))
    idx, dist = nearest_neighbours(samples, reference, k)
    flagged = dist[:, 0] < threshold
    return Memorization(float(flagged.mean()), threshold, dist, idx)


def nearest_rows_figure(
    samples: np.ndarray,  # uint8 (N, 3, R, R)
    reference: np.ndarray,  # uint8 (M, 3, R, R)
    nn_index: np.ndarray,  # (N, k)
    nn_distance: np.ndarray,  # (N, k) for the captions
    threshold: float,
    title: str,
) -> Image.Image:
    """Rows of "sample | k nearest training images", a red frame on samples closer than threshold."""
    n, k = nn_index.shape
    r = samples.shape[-1]
    scale = max(1, 64 // r)
    tile, gap, caption, header = r * scale, 8, 12, 16 + 12 * title.count("\n")
    width = max((k + 1) * tile + k * 2 + gap, 6 * max(len(line) for line in title.splitlines()) + 4)
    height = header + n * (tile + caption)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), title, fill="black")

    def put(img: np.ndarray, x: int, y: int) -> None:
        canvas.paste(Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).resize((tile, tile), Image.NEAREST),
                     (x, y))

    for i in range(n):
        y = header + i * (tile + caption)
        put(samples[i], 0, y)
        if nn_distance[i, 0] < threshold:
            draw.rectangle([0, y, tile - 1, y + tile - 1], outline="red", width=2)
        for j in range(k):
            x = tile + gap + j * (tile + 2)
            put(reference[nn_index[i, j]], x, y)
            draw.text((x + 1, y + tile), f"{nn_distance[i, j]:.3g}", fill="black")
    return canvas
