"""Distribution metrics on feature vectors: Fréchet distance, KID, precision/recall, nearest neighbours.

Pure functions of numpy arrays (float64 where it matters); no feature network in here.
"""

from __future__ import annotations

import numpy as np
import torch


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition.

    Tiny negative eigenvalues (round-off of a rank-deficient covariance) are clipped to zero.
    """
    a = (a + a.T) / 2.0
    vals, vecs = np.linalg.eigh(a)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(sigma1 @ sigma2)), computed as tr(sqrt(s1^1/2 sigma2 s1^1/2)).

    The inner matrix is symmetric PSD, so eigvalsh is exact and stable where a general
    sqrtm of the non-symmetric product would need complex arithmetic and an epsilon.
    """
    s1 = sqrtm_psd(sigma1)
    m = s1 @ sigma2 @ s1
    vals = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2)); never below 0."""
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fd, 0.0))


def frechet_distance_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of two feature sets (N, D), (M, D).

    With fewer samples than dimensions (e.g. 64 images x 1280 features) the covariances have
    rank < N, and tr(sqrt(S1 S2)) equals the nuclear norm of Xc Yc^T / sqrt((N-1)(M-1)) for
    the centred features: an N x M SVD instead of two D x D eigen-decompositions; same value.
    """
    x = np.asarray(real, dtype=np.float64)
    y = np.asarray(fake, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need two feature sets (N>=2, D) of one width, got {x.shape} and {y.shape}")
    if max(len(x), len(y)) > x.shape[1]:
        return frechet_distance(*mean_cov(x), *mean_cov(y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    n, m = len(x), len(y)
    tr_sqrt = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    diff = x.mean(0) - y.mean(0)
    fd = diff @ diff + (xc**2).sum() / (n - 1) + (yc**2).sum() / (m - 1) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))


def kid_subset_size(n_real: int, n_fake: int, subset_size: int) -> int:
    """Images per KID subset: ``subset_size`` capped at the smaller set (StyleGAN2-ADA's rule).

    When this equals ``n_fake`` every subset holds all the fakes, so the subset std measures
    only the spread over real subsets and understates the estimate's uncertainty; evaluation
    reports the effective size so that case is visible.
    """
    return min(subset_size, n_real, n_fake)


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    num_subsets: int = 50,  # random subsets the estimate is averaged over
    subset_size: int = 500,  # capped at the smaller set
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over subsets; returns (mean, std)."""
    x_all = np.asarray(real, dtype=np.float64)
    y_all = np.asarray(fake, dtype=np.float64)
    d = x_all.shape[1]
    m = kid_subset_size(len(x_all), len(y_all), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x_all)} real and {len(y_all)} fake")
    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        a = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = a - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())


def pairwise_distances(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64, in row blocks to bound memory."""
    ta = torch.as_tensor(np.asarray(a), dtype=torch.float64).reshape(len(a), -1)
    tb = torch.as_tensor(np.asarray(b), dtype=torch.float64).reshape(len(b), -1)
    return torch.cat([torch.cdist(ta[i : i + batch], tb) for i in range(0, len(ta), batch)])


def knn_radii(features: np.ndarray, k: int) -> torch.Tensor:
    """Distance from each vector to its k-th nearest neighbour in the same set (self excluded)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k={k} vectors, got {len(features)}")
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64).reshape(len(features), -1)
    # Row blocks keep memory at 1024 x N; the k+1-th smallest counts the zero distance to itself.
    return torch.cat([torch.cdist(f[i : i + 1024], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), 1024)])


def _coverage(manifold: np.ndarray, radii: torch.Tensor, queries: np.ndarray) -> float:
    """Share of queries inside at least one hypersphere (centre, radius) of the manifold."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64).reshape(len(queries), -1)
    m = torch.as_tensor(np.asarray(manifold), dtype=torch.float64).reshape(len(manifold), -1)
    inside = [(torch.cdist(q[i : i + 1024], m) <= radii[None, :]).any(dim=1) for i in range(0, len(q), 1024)]
    return float(torch.cat(inside).double().mean())


def seeded_rows(n: int, k: int, seed: int) -> np.ndarray:
    """k of n rows by a seeded draw without replacement, sorted (all n when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.RandomState(seed).choice(n, k, replace=False))


def equal_size_draw(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both sets cut to the smaller one's size; the larger by a seeded random draw (sorted rows)."""
    n = min(len(real), len(fake))
    return np.asarray(real)[seeded_rows(len(real), n, seed)], np.asarray(fake)[seeded_rows(len(fake), n, seed)]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, seed: int = 0) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN hypersphere manifolds.

    precision: share of fakes inside the real manifold; recall: share of reals inside the fake one.
    k-NN radii shrink as a set grows, so both manifolds are built from equally many vectors
    (as the paper and StyleGAN2-ADA's pr50k3 do): the larger set is cut to the smaller's size
    by a seeded draw (``equal_size_draw``).
    """
    real, fake = equal_size_draw(real, fake, seed)
    precision = _coverage(real, knn_radii(real, k), fake)
    recall = _coverage(fake, knn_radii(fake, k), real)
    return precision, recall


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances (len(queries), k) of the k nearest reference vectors, closest first."""
    dist = pairwise_distances(queries, reference)
    k = min(k, dist.shape[1])
    d, idx = torch.topk(dist, k, dim=1, largest=False, sorted=True)
    return idx.numpy(), d.numpy()


def self_nn_distances(reference: np.ndarray, num_queries: int, seed: int = 0) -> np.ndarray:
    """Distance from up to ``num_queries`` reference vectors to their nearest *distinct* one.

    Exact duplicates (a repeated animation frame) are one image shown twice, not a close pair:
    counting them would pull a memorization threshold to 0. A query with only duplicates
    gets inf (callers take percentiles of the finite values).
    """
    n = len(reference)
    if n < 2:
        raise ValueError("need at least 2 reference vectors for self-distances")
    q = seeded_rows(n, num_queries, seed)
    ref = np.asarray(reference)
    dist = pairwise_distances(ref[q], ref)
    dist[torch.arange(len(q)), torch.as_tensor(q)] = float("inf")  # itself
    # Equal rows come out of cdist at ~1e-7 of the vectors' norm, not 0: below 1e-5 of it they
    # are the same vector (distinct 8-bit images differ by >= 1/255 in some pixel, far above).
    same = 1e-5 * (1.0 + float(np.linalg.norm(ref.reshape(len(ref), -1), axis=1).max()))
    dist[dist <= same] = float("inf")  # its duplicates
    return dist.min(dim=1).values.numpy()
