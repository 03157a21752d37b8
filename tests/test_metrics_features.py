"""One batching loop for both feature extractors (metrics.effnet.batched_features)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stylegan.metrics import inception
from stylegan.training import effnet


def test_batched_features_is_the_features_of_each_chunk_concatenated() -> None:
    imgs = np.random.RandomState(0).randint(0, 256, (7, 4, 4, 3)).astype(np.uint8)
    seen: list[int] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x.flatten(1)[:, :5] * 2

    out = effnet.batched_features(imgs, 3, torch.device("cpu"), torch.Tensor.float, features, 5)
    assert seen == [3, 3, 1] and out.dtype == np.float64
    expected = torch.from_numpy(imgs).permute(0, 3, 1, 2).flatten(1)[:, :5].double().numpy() * 2
    np.testing.assert_array_equal(out, expected)
    assert effnet.batched_features(imgs[:0], 3, torch.device("cpu"), torch.Tensor.float, features, 5).shape == (0, 5)


def test_both_extractors_batch_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    def spy(module: str):  # type: ignore[no-untyped-def]
        def batched(images, batch_size, device, preprocess, features, feature_dim):  # type: ignore[no-untyped-def]
            calls.append((module, batch_size, feature_dim))
            return np.zeros((len(images), feature_dim))
        return batched

    monkeypatch.setattr(effnet, "batched_features", spy("effnet"))
    monkeypatch.setattr(inception, "batched_features", spy("inception"))
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    effnet.FeatureExtractor(net=effnet.EfficientNetLite0().eval(), batch_size=5)(imgs)
    fid = object.__new__(inception.InceptionFeatureExtractor)  # no weights needed: batching only
    fid.device, fid.batch_size, fid.net = torch.device("cpu"), 4, SimpleNamespace(features=torch.flatten)
    fid(imgs)
    assert calls == [("effnet", 5, effnet.FEATURE_DIM), ("inception", 4, inception.FEATURE_DIM)]
