"""The Pokédex's metrics in evaluation: *_dex, fd_random, the "looks like" report and names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan.config import EvaluateConfig
from stylegan.metrics import evaluate_generator, stats
from stylegan.metrics.evaluate import random_features
from stylegan.pokedex import load_pokedex, save_pokedex
from stylegan.pokedex.explain import explain
from stylegan.pokedex.naming import portmanteau
from stylegan.pokedex.network import DexNet
from tests.helpers import blob_images, blur, tiny_generator

NAMES = ["Bulbasaur", "Ivysaur", "Charmander", "Squirtle"]


@pytest.fixture(scope="module")
def pokedex_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) Pokédex of four species: enough for the plumbing."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pokedex")
    return save_pokedex(DexNet(4, width=8), folder, [1, 2, 4, 7], NAMES, {"top1": 0.0, "top5": 0.0})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    np.save(root / "images_32.npy", blob_images(40, 11))
    return root


def small_cfg(tmp: Path, **kw: object) -> EvaluateConfig:
    base = dict(num_samples=16, num_real=24, seed=3, batch_size=16, kid_subsets=5, kid_subset_size=8,
                novelty_samples=4, report_grid_size=4, interpolation_steps=2, cache_dir=str(tmp / "cache"),
                explain_samples=6)
    return EvaluateConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_dex_metrics_and_looks_like_report(data_root: Path, pokedex_dir: Path, tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, pokedex=str(pokedex_dir))
    G = tiny_generator()
    metrics = evaluate_generator(G, data_root, cfg, tmp_path / "m", tmp_path / "r", log=lambda _: None)
    for name in ("fd_dex", "kid_dex", "kid_dex_std", "precision_dex", "recall_dex", "memorization_dex",
                 "fd_random"):
        assert name in metrics and np.isfinite(metrics[name]), name
    assert metrics["fd_dex"] > 0 and 0 <= metrics["precision_dex"] <= 1 and 0 <= metrics["recall_dex"] <= 1
    assert (tmp_path / "r" / "looks_like.png").is_file() and (tmp_path / "r" / "novelty_dex.png").is_file()
    report = json.loads((tmp_path / "r" / "looks_like.json").read_text())
    assert list(report["samples"]) == ["3", "4", "5", "6", "7", "8"]  # evaluate.seed onwards
    first = report["samples"]["3"]
    assert len(first["looks_like"]) == 3 and {m["name"] for m in first["looks_like"]} <= set(NAMES)
    probs = [m["prob"] for m in first["looks_like"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    top = [m["name"] for m in first["looks_like"][:2]]
    assert first["name"] == portmanteau(*top)
    # Cached reference features and a deterministic report: a second run is identical.
    again = evaluate_generator(G, data_root, cfg, tmp_path / "m2", tmp_path / "r2", log=lambda _: None)
    assert again == metrics
    assert (tmp_path / "r2" / "looks_like.json").read_text() == (tmp_path / "r" / "looks_like.json").read_text()


def test_missing_pokedex_skips_with_one_line(data_root: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    cfg = small_cfg(tmp_path, pokedex=str(tmp_path / "no-such-pokedex"))
    metrics = evaluate_generator(tiny_generator(), data_root, cfg, tmp_path / "m", tmp_path / "r", log=notes.append)
    assert not any(k.endswith("_dex") for k in metrics) and "fd_random" in metrics
    assert any("fd_dex" in n and "skipped" in n and "pokegan pokedex" in n for n in notes)
    assert not (tmp_path / "r" / "looks_like.png").exists()


def test_fd_random_is_near_zero_for_real_vs_real_and_grows_with_blur() -> None:
    rand = random_features(torch.device("cpu"))
    a, b = blob_images(300, 1), blob_images(300, 2)
    fa = rand(a)
    same = stats.frechet_distance_features(fa, rand(b))
    blurred = [stats.frechet_distance_features(fa, rand(blur(b, s))) for s in (1.0, 2.0)]
    assert same < blurred[0] < blurred[1]
    # The same random network every time (seeded, not the global RNG).
    torch.manual_seed(123)
    assert np.array_equal(random_features(torch.device("cpu"))(a[:4]), fa[:4])


def test_explain_is_deterministic_and_names_the_top_two(pokedex_dir: Path) -> None:
    dex = load_pokedex(pokedex_dir)
    images = np.ascontiguousarray(blob_images(5, 3).transpose(0, 2, 3, 1))
    first, second = explain(dex, images), explain(dex, images)
    assert first == second
    for e in first:
        assert len(e.looks_like) == 3 and e.name == portmanteau(e.looks_like[0].name, e.looks_like[1].name)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        explain(dex, images[0])


@pytest.mark.parametrize(("a", "b", "name"), [("Bulbasaur", "Charmander", "Bulbamander"),
                                              ("Pikachu", "Squirtle", "Pikaquirtle"),
                                              ("Nidoran♀", "Zubat", "Nidobat"),
                                              ("Eevee", "Eevee", "Eevee"),
                                              ("Rotom (Wash)", "Bulbasaur", "Robasaur"),  # the form is not blended
                                              ("Venusaur", "Rotom (Heat)", "Venutom")])
def test_portmanteau(a: str, b: str, name: str) -> None:
    assert portmanteau(a, b) == name
