"""Feature-space metrics on synthetic point clouds: exact cases first, then the behaviours they must show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan.metrics import novelty, stats
from stylegan.metrics.novelty import memorization, pixel_vectors
from stylegan.metrics.reference import reference_indices


def test_sqrtm_psd_of_rank_deficient_covariance() -> None:
    rng = np.random.RandomState(0)
    x = rng.randn(20, 50)  # 20 samples in 50-d: covariance of rank 19
    cov = np.cov(x, rowvar=False)
    root = stats.sqrtm_psd(cov)
    assert np.all(np.isfinite(root))
    np.testing.assert_allclose(root @ root, cov, atol=1e-10)


def test_frechet_distance_closed_forms() -> None:
    rng = np.random.RandomState(1)
    a = rng.randn(8, 8)
    sigma = a @ a.T + np.eye(8)
    mu = rng.randn(8)
    shift = rng.randn(8)
    assert stats.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # Equal covariances: FD is the squared distance of the means.
    assert stats.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    # Diagonal covariances: FD = sum (sqrt(a) - sqrt(b))^2.
    d1, d2 = rng.uniform(0.1, 4, 8), rng.uniform(0.1, 4, 8)
    expected = ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert stats.frechet_distance(mu, np.diag(d1), mu, np.diag(d2)) == pytest.approx(expected, rel=1e-9)


def test_fd_identical_sets_zero_even_when_singular() -> None:
    x = np.random.RandomState(2).randn(40, 128)  # fewer samples than dimensions, like 64 images x 1280 features
    assert stats.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_kid_same_distribution_is_zero_within_std_and_grows_with_shift() -> None:
    rng = np.random.RandomState(3)
    real, fake = rng.randn(300, 32), rng.randn(300, 32)
    mean, std = stats.kid(real, fake, num_subsets=20, subset_size=100, seed=0)
    assert std > 0 and abs(mean) < std
    kids = [stats.kid(real, fake + s, num_subsets=20, subset_size=100, seed=0)[0] for s in (0.0, 0.3, 0.6, 1.0)]
    assert kids == sorted(kids) and kids[-1] > 10 * std
    assert stats.kid(real, fake, num_subsets=20, subset_size=100, seed=0) == (mean, std)  # seeded


def test_precision_drops_off_manifold_and_recall_drops_on_partial_cover() -> None:
    rng = np.random.RandomState(4)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = np.concatenate([c + rng.randn(100, 2) for c in centres])
    fresh = np.concatenate([c + rng.randn(100, 2) for c in centres])
    p, r = stats.precision_recall(real, fresh, k=3)
    assert p > 0.9 and r > 0.9
    off = fresh + np.array([5.0, 5.0])  # between the modes: outside the real manifold
    p_off, _ = stats.precision_recall(real, off, k=3)
    assert p_off < 0.2
    one_mode = centres[0] + rng.randn(400, 2)  # realistic but covering a quarter of the data
    p_one, r_one = stats.precision_recall(real, one_mode, k=3)
    assert p_one > 0.85 and r_one < 0.35


def test_nearest_neighbours_and_self_distances_exclude_self() -> None:
    ref = np.array([[0.0], [1.0], [3.0], [7.0]])
    idx, dist = stats.nearest_neighbours(np.array([[2.9], [0.2]]), ref, 2)
    assert idx.tolist() == [[2, 1], [0, 1]]
    np.testing.assert_allclose(dist[:, 0], [0.1, 0.2])
    np.testing.assert_allclose(np.sort(stats.self_nn_distances(ref, 10)), [1.0, 1.0, 2.0, 4.0])


def test_memorization_flags_copies_and_not_fresh_samples() -> None:
    rng = np.random.RandomState(5)

    def images(n: int) -> np.ndarray:
        return rng.randint(0, 256, (n, 3, 16, 16), dtype=np.uint8)

    train = images(200)
    fresh = images(50)
    copies = train[rng.choice(200, 50, replace=False)].astype(np.int16)
    copies = np.clip(copies + rng.randint(-3, 4, copies.shape), 0, 255).astype(np.uint8)  # near-copies
    ref = pixel_vectors(train)
    assert memorization(pixel_vectors(copies), ref, percentile=1.0).score == 1.0
    assert memorization(pixel_vectors(fresh), ref, percentile=1.0).score <= 0.1
    half = memorization(pixel_vectors(np.concatenate([copies[:25], fresh[:25]])), ref, percentile=1.0)
    assert half.score == pytest.approx(0.5, abs=0.06)
    assert half.nn_index.shape == (50, 3) and np.all(np.diff(half.nn_distance, axis=1) >= 0)


def test_fd_low_rank_path_matches_the_covariance_path() -> None:
    rng = np.random.RandomState(6)
    x, y = rng.randn(30, 64), rng.randn(25, 64) * 1.5 + 0.3
    expected = stats.frechet_distance(*stats.mean_cov(x), *stats.mean_cov(y))  # D x D eigen route
    assert stats.frechet_distance_features(x, y) == pytest.approx(expected, rel=1e-6)  # N x M SVD route


def test_precision_recall_builds_both_manifolds_from_equally_many_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    # k-NN radii shrink as a set grows: 2000 reals against 500 fakes would compare manifolds
    # of different resolution. Both must be cut to the smaller size (seeded draw of the larger).
    rng = np.random.RandomState(7)
    real, fake = rng.randn(2000, 8), rng.randn(500, 8)
    sizes: list[int] = []
    knn = stats.knn_radii

    def spy(features: np.ndarray, k: int) -> torch.Tensor:
        sizes.append(len(features))
        return knn(features, k)

    monkeypatch.setattr(stats, "knn_radii", spy)
    p, r = stats.precision_recall(real, fake, k=3, seed=1)
    assert sizes == [500, 500]
    assert (p, r) == stats.precision_recall(real, fake, k=3, seed=1)  # seeded: same numbers again
    real_draw, fake_same = stats.equal_size_draw(real, fake, seed=1)
    assert np.array_equal(fake_same, fake) and len(real_draw) == 500 and len(np.unique(real_draw, axis=0)) == 500
    assert (p, r) == stats.precision_recall(real_draw, fake, k=3)  # equal sizes: nothing more is drawn
    # Symmetric: more fakes than reals cuts the fakes.
    sizes.clear()
    stats.precision_recall(fake, real, k=3)
    assert sizes == [500, 500]


def test_kid_subset_size_is_capped_at_the_smaller_set() -> None:
    assert stats.kid_subset_size(2000, 500, 1000) == 500  # every subset would hold all fakes
    assert stats.kid_subset_size(2000, 500, 250) == 250
    assert stats.kid_subset_size(100, 500, 250) == 100


def test_feature_memorization_threshold_ignores_duplicates_and_flags_exact_copies() -> None:
    rng = np.random.RandomState(8)
    base = rng.randn(50, 4)
    ref = np.concatenate([base, base])  # every training vector twice, as repeated animation frames
    mem = memorization(ref[:5].copy(), ref, percentile=1.0, self_queries=100)
    # The threshold comes from the nearest *distinct* vectors (as in pixel space), not the 0 of the duplicates.
    nn = np.sort(np.linalg.norm(base[:, None] - base[None], axis=2), axis=1)[:, 1]
    assert mem.threshold > 0 and mem.threshold == pytest.approx(np.percentile(np.concatenate([nn, nn]), 1.0))
    assert mem.score == 1.0  # exact copies, at distance 0
    # A training set of one image repeated: the threshold is 0, and exact copies still count (<=).
    same = np.repeat(base[:1], 10, axis=0)
    mem = memorization(np.concatenate([same[:2], base[1:3]]), same, percentile=1.0)
    assert mem.threshold == 0.0 and mem.score == 0.5


def _training_array(tmp_path: Path, n: int, res: int, seed: int) -> np.ndarray:
    """A memory-mapped uint8 (n, 3, res, res) array on disk, as images_<R>.npy is read."""
    path = tmp_path / f"images_{res}.npy"
    np.save(path, np.random.RandomState(seed).randint(0, 256, (n, 3, res, res), dtype=np.uint8))
    return np.load(path, mmap_mode="r")


def test_pixel_memorization_finds_a_copy_outside_the_reference_draw(tmp_path: Path) -> None:
    train = _training_array(tmp_path, 300, 64, 9)  # 64 px: pooled to 32 px like the real data
    draw = reference_indices(len(train), 40, seed=0)  # what evaluation's num_real draw would hold
    row = int(np.setdiff1d(np.arange(len(train)), draw)[123])
    rng = np.random.RandomState(10)
    samples = np.concatenate([np.asarray(train[[row]]), rng.randint(0, 256, (7, 3, 64, 64), dtype=np.uint8)])
    mem = novelty.pixel_memorization(samples, train, percentile=1.0, k=3, block=64)  # several blocks
    assert mem.nn_index[0, 0] == row and mem.nn_distance[0, 0] == 0.0
    assert mem.score == pytest.approx(1 / 8)  # the copy only
    assert mem.nn_index.shape == (8, 3) and np.all(np.diff(mem.nn_distance, axis=1) >= 0)
    # The block-wise float32 search re-ranked in float64 equals a brute-force float64 search.
    idx, dist = stats.nearest_neighbours(pixel_vectors(samples), pixel_vectors(np.asarray(train)), 3)
    np.testing.assert_array_equal(mem.nn_index, idx)
    # atol: float64 cdist's matmul path leaves up to ~1.6e-6 for identical rows on an AVX-512
    # machine where the exact search gives 0.
    np.testing.assert_allclose(mem.nn_distance, dist, rtol=1e-6, atol=1e-5)


def test_pixel_threshold_uses_the_nearest_distinct_training_image(tmp_path: Path) -> None:
    # A third of the training images appear twice (repeated animation frames): their nearest
    # other image is at distance 0, which must not drag the copy threshold to 0.
    base = np.asarray(_training_array(tmp_path, 120, 16, 11))
    train = np.concatenate([base, base[:40]])
    mem = novelty.pixel_memorization(train[:2], train, percentile=10.0, self_queries=1000, block=50)
    vec = pixel_vectors(train)
    d = stats.pairwise_distances(vec, vec).numpy()
    d[d < 1e-3] = np.inf  # itself and its duplicates (float64 cdist leaves ~1e-7 for equal rows)
    assert mem.threshold > 0
    assert mem.threshold == pytest.approx(np.percentile(d.min(axis=1), 10.0), rel=1e-9)
    assert mem.score == 1.0 and np.all(mem.nn_distance[:, 0] == 0)  # exact copies are flagged
