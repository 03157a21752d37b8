"""Novelty: are the generated Pokémon new, or copies of training images?

For a sample, its nearest training images in pixel space and in feature space, drawn as
"sample | 3 nearest" rows. The memorization score is the share of samples whose nearest
training image is at most a threshold learned from the training set itself: a low
percentile of the distances from training images to their nearest *other* training image.
A sample closer to a training image than almost any training image is to its neighbour is
a copy, not a new creature.

Pixel space searches the *whole* training array (memory-mapped, in blocks: cheap), and the
threshold's self-distances are measured against the whole array too, so both sides of the
comparison see the same neighbours. Feature space (``memorization``) searches only the
vectors it is given, in evaluation the ``num_real`` reference draw: features of every
training image would take minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from stylegan.metrics.stats import nearest_neighbours, seeded_rows, self_nn_distances

PIXEL_RESOLUTION = 32  # pixel-space distances on area-downsampled images: 16x less work at 64px, same copies
PIXEL_BLOCK = 4096  # training rows per distance block: 4096 x 3072 float32 = 50 MB at 32 px
_SPARE = 4  # extra candidates per query kept from the float32 pass, re-ranked exactly in float64
_DISTINCT_CANDIDATES = 8  # neighbours searched per self-query to find its nearest *distinct* image


def pixel_vectors(images: np.ndarray, resolution: int = PIXEL_RESOLUTION) -> np.ndarray:
    """uint8 (N, 3, R, R) -> float32 (N, 3 * r * r) in [0, 1], area-downsampled to at most ``resolution``."""
    x = torch.from_numpy(np.asarray(images).astype(np.float32)) / 255.0  # a copy: memory maps are read-only
    if x.shape[-1] > resolution:
        x = F.adaptive_avg_pool2d(x, resolution)
    return x.reshape(len(x), -1).numpy()


@dataclass(frozen=True)
class Memorization:
    score: float  # share of samples flagged as copies
    threshold: float  # distance at or below which a sample counts as a copy
    nn_distance: np.ndarray  # (N, k) distances to the nearest training images, closest first
    nn_index: np.ndarray  # (N, k) their rows in the searched set (training array or reference draw)


def memorization(
    samples: np.ndarray,  # (N, D) sample vectors (features or pixels)
    reference: np.ndarray,  # (M, D) training vectors: the only ones searched
    *,
    percentile: float = 1.0,  # of training self-distances; the threshold
    k: int = 3,  # neighbours kept per sample (for the figure)
    self_queries: int = 1000,  # training images whose self-distance is measured (bounds the cost)
    seed: int = 0,
) -> Memorization:
    """Memorization against the given reference vectors only (evaluation: the reference draw)."""
    self_dist = self_nn_distances(reference, self_queries, seed)
    finite = self_dist[np.isfinite(self_dist)]
    threshold = float(np.percentile(finite, percentile)) if len(finite) else 0.0  # all duplicates: copies only
    idx, dist = nearest_neighbours(samples, reference, k)
    # <=, not <: with duplicates among the training images the threshold can be 0, and an
    # exact copy (distance 0) must still count.
    flagged = dist[:, 0] <= threshold
    return Memorization(float(flagged.mean()), threshold, dist, idx)


def nearest_training_rows(
    queries: np.ndarray,  # float32 (Q, D) pixel vectors, as pixel_vectors makes them
    train: np.ndarray,  # uint8 (M, 3, R, R); a memory map is read block by block
    k: int,  # neighbours returned per query
    *,
    exclude: np.ndarray | None = None,  # (Q,) training row each query skips (itself); -1 = none
    block: int = PIXEL_BLOCK,
    resolution: int = PIXEL_RESOLUTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and float64 distances (Q, k) of each query's nearest training images, closest first.

    One pass over ``train``: squared distances of each block in float32 by a matrix product
    (centred on the queries' mean to limit cancellation), ``k + _SPARE`` candidates kept per
    query, then the candidates' exact float64 distances decide the order (ties by row), so an
    exact copy reports 0 and the result does not hang on float32 rounding.
    """
    m = len(train)
    kc = min(k + _SPARE, m)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    centre = q.mean(dim=0)
    qc = q - centre
    q_sq = (qc * qc).sum(dim=1, keepdim=True)
    skip = torch.as_tensor(np.full(len(q), -1) if exclude is None else np.asarray(exclude), dtype=torch.int64)
    best_d = torch.empty(len(q), 0)
    best_i = torch.empty(len(q), 0, dtype=torch.int64)
    for start in range(0, m, block):
        v = torch.from_numpy(pixel_vectors(np.asarray(train[start : start + block]), resolution)) - centre
        d2 = torch.addmm(q_sq + (v * v).sum(dim=1)[None, :], qc, v.T, alpha=-2.0)
        rows = torch.arange(start, start + len(v))
        d2[skip[:, None] == rows[None, :]] = float("inf")
        d_all = torch.cat([best_d, d2], dim=1)
        i_all = torch.cat([best_i, rows.expand(len(q), -1)], dim=1)
        best_d, pos = torch.topk(d_all, min(kc, d_all.shape[1]), dim=1, largest=False, sorted=False)
        best_i = torch.gather(i_all, 1, pos)
    cand = best_i.numpy()
    uniq, where = np.unique(cand, return_inverse=True)
    where = where.reshape(cand.shape)
    vecs = pixel_vectors(np.asarray(train[uniq]), resolution).astype(np.float64)
    q64 = q.numpy().astype(np.float64)
    exact = np.stack([np.linalg.norm(q64 - vecs[where[:, j]], axis=1) for j in range(cand.shape[1])], axis=1)
    exact[cand == skip.numpy()[:, None]] = np.inf
    order = np.lexsort((cand, exact), axis=1)[:, :k]
    return np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)


def pixel_memorization(
    samples: np.ndarray,  # uint8 (N, 3, R, R)
    train: np.ndarray,  # uint8 (M, 3, R, R): the whole training array (e.g. images_<R>.npy memory-mapped)
    *,
    percentile: float = 1.0,  # of training self-distances; the threshold
    k: int = 3,  # neighbours kept per sample (for the figure)
    self_queries: int = 1000,  # training images whose self-distance is measured (bounds the cost)
    seed: int = 0,  # draws the self-queries
    block: int = PIXEL_BLOCK,
    resolution: int = PIXEL_RESOLUTION,
) -> Memorization:
    """Pixel-space memorization against every training image; ``nn_index`` are rows of ``train``.

    The threshold is the ``percentile`` of the distances from ``self_queries`` training
    images (a seeded draw of the whole array) to their nearest *distinct* training image:
    exact duplicates (repeated animation frames, say) are one image shown twice, not a
    close pair, and would otherwise pull the threshold to 0. A sample at most the threshold
    from a training image, an exact copy included, is flagged.
    """
    m = len(train)
    if m < 2:
        raise ValueError(f"pixel memorization needs at least 2 training images, got {m}")
    self_rows = seeded_rows(m, self_queries, seed)
    self_vec = pixel_vectors(np.asarray(train[self_rows]), resolution)
    queries = np.concatenate([pixel_vectors(samples, resolution), self_vec])
    exclude = np.concatenate([np.full(len(samples), -1), self_rows])
    idx, dist = nearest_training_rows(queries, train, max(k, _DISTINCT_CANDIDATES), exclude=exclude, block=block,
                                      resolution=resolution)
    n = len(samples)
    self_dist = np.where(dist[n:] > 0, dist[n:], np.inf).min(axis=1)  # inf: only duplicates among the candidates
    finite = self_dist[np.isfinite(self_dist)]
    threshold = float(np.percentile(finite, percentile)) if len(finite) else 0.0  # all duplicates: copies only
    flagged = dist[:n, 0] <= threshold
    return Memorization(float(flagged.mean()), threshold, dist[:n, :k], idx[:n, :k])


def nearest_rows_figure(
    samples: np.ndarray,  # uint8 (N, 3, R, R)
    reference: np.ndarray,  # uint8 (M, 3, R, R)
    nn_index: np.ndarray,  # (N, k)
    nn_distance: np.ndarray,  # (N, k) for the captions
    threshold: float,
    title: str,
) -> Image.Image:
    """Rows of "sample | k nearest training images", a red frame on samples at most threshold away."""
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
        if nn_distance[i, 0] <= threshold:
            draw.rectangle([0, y, tile - 1, y + tile - 1], outline="red", width=2)
        for j in range(k):
            x = tile + gap + j * (tile + 2)
            put(reference[nn_index[i, j]], x, y)
            draw.text((x + 1, y + tile), f"{nn_distance[i, j]:.3g}", fill="black")
    return canvas
