"""``evaluate_generator``: every metric of a generator against the prepared data, plus the reports.

Metrics (names as eval.json and MLflow carry them):
- ``swd``, ``swd_<R>``: sliced Wasserstein distance (x1e3) per Laplacian level, no weights needed;
- ``fd_effnet``, ``kid_effnet``, ``kid_effnet_std``, ``precision``, ``recall``: on
  EfficientNet-Lite0 ImageNet features (installed offline; FD-effnet is *not* comparable
  with published FIDs); precision/recall on equally many reals and fakes;
- ``fid``, ``kid_inception``, ``kid_inception_std``: standard Inception-v3 features, only
  when the FID weights are on disk and load;
- ``kid_subset_size``: images per KID subset actually used (``kid_subset_size`` capped at
  the smaller set); equal to ``num_samples`` means every subset held all the fakes, so the
  KID stds understate the uncertainty;
- ``fd_dex``, ``kid_dex``, ``kid_dex_std``, ``precision_dex``, ``recall_dex``,
  ``memorization_dex``: the same in the Pokédex's features (``evaluate.pokedex``, a network
  trained on the sprites' species: stylegan/pokedex), the in-domain yardstick and the
  champion metric. The ImageNet metrics above stay as secondary columns: a projected
  discriminator looks through EfficientNet-Lite0 itself, so they are not comparable across
  discriminator kinds;
- ``fd_random``: FD in the features of the Pokédex architecture at a fixed random init
  (StyleGAN-XL's random-network FD): no ImageNet, no training, always available;
- ``memorization`` (pixel space, against *every* training image) and
  ``memorization_effnet`` (feature space, against the ``num_real`` reference draw only):
  share of samples that copy a training image.
Metrics whose network is missing or whose weights file is unusable are skipped with one
line, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stylegan import sampling
from stylegan.config import EvaluateConfig
from stylegan.io import atomic_write_json
from stylegan.metrics import novelty, stats
from stylegan.metrics.inception import InceptionFeatureExtractor
from stylegan.metrics.reference import ReferenceSet
from stylegan.metrics.swd import swd
from stylegan.pokedex.explain import Explanation, explain
from stylegan.pokedex.network import random_network
from stylegan.pokedex.store import Pokedex, PokedexError, load_pokedex
from stylegan.reports import captioned_grid, write_reports
from stylegan.sampling import save_png
from stylegan.training.effnet import FeatureExtractor, MissingWeightsError

TICKS_NAME = "train_ticks.csv"  # the flows copy the trainer's tick log here, next to eval.json
RANDOM_NET_SEED = 0  # fd_random's network: the same random weights in every evaluation


def _deep_feature_metrics(
    prefix: str, real: np.ndarray, fake: np.ndarray, cfg: EvaluateConfig
) -> dict[str, float]:
    kid_mean, kid_std = stats.kid(
        real, fake, num_subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed
    )
    return {
        prefix[0]: stats.frechet_distance_features(real, fake),
        f"kid_{prefix[1]}": kid_mean,
        f"kid_{prefix[1]}_std": kid_std,
    }


def evaluation_samples(G: torch.nn.Module, cfg: EvaluateConfig) -> np.ndarray:
    """uint8 ``(num_samples, 3, R, R)`` samples the metrics compare with the data.

    Noise inputs are random, as in the official StyleGAN metrics: const noise would give every
    sample the same stochastic detail, a narrower distribution than the generator's. The noise
    is drawn from ``cfg.seed`` in a forked RNG, so the samples are deterministic and the
    caller's global RNG is left as it was.
    """
    dev = next(G.parameters()).device
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        fake = sampling.generate(
            G, seeds=seeds, truncation_psi=cfg.truncation_psi, noise_mode="random", batch_size=cfg.batch_size
        )
    return np.ascontiguousarray(fake.transpose(0, 3, 1, 2))


def evaluate_generator(
    G: torch.nn.Module,  # a Generator (eval mode); its img_resolution picks images_<R>.npy
    data_root: str | Path,  # data/prepared
    cfg: EvaluateConfig,
    out_dir: str | Path,  # where the metrics JSON goes (metrics/)
    reports_dir: str | Path,  # where the figures go (reports/)
    *,
    metrics_file: str = "eval.json",  # name of the JSON under out_dir
    ticks: str | Path | None = None,  # training tick log for loss curves; None = out_dir/train_ticks.csv if present
    device: str | torch.device | None = None,  # feature networks and SWD; None = G's device
    log: Callable[[str], None] = print,  # one-line notes (skipped metrics)
) -> dict[str, float]:
    """Compute every available metric, write ``out_dir/metrics_file`` and the reports; return the metrics."""
    if cfg.num_samples < 2:
        raise ValueError(f"evaluate.num_samples must be at least 2, got {cfg.num_samples}")
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    dev = torch.device(device) if device is not None else next(G.parameters()).device
    res = int(G.img_resolution)
    ref = ReferenceSet(data_root, res, num_real=cfg.num_real, seed=cfg.seed, cache_dir=cfg.cache_dir)
    if len(ref.indices) < 2:
        raise ValueError(f"{data_root} holds {len(ref.indices)} image(s) at {res}x{res}; evaluation needs at least 2")

    fake = evaluation_samples(G, cfg)
    real = ref.images
    metrics: dict[str, float] = {}

    if res >= max(cfg.swd_min_resolution, 7):
        metrics.update(swd(real, fake, min_resolution=cfg.swd_min_resolution, seed=cfg.seed, device=dev))
    else:
        log(f"swd skipped: {res}x{res} images are below evaluate.swd_min_resolution={cfg.swd_min_resolution}")

    fake_eff: np.ndarray | None = None
    real_eff: np.ndarray | None = None
    try:
        effnet = FeatureExtractor(batch_size=cfg.batch_size, device=dev)
    except MissingWeightsError as exc:  # UnusableWeightsError (corrupt file) included
        log(f"fd_effnet, kid_effnet, precision, recall skipped: {exc}")
    else:
        real_eff = ref.features("effnet", effnet)
        fake_eff = effnet(fake)
        metrics.update(_deep_feature_metrics(("fd_effnet", "effnet"), real_eff, fake_eff, cfg))
        metrics["precision"], metrics["recall"] = stats.precision_recall(
            real_eff, fake_eff, k=cfg.pr_k, seed=cfg.seed
        )

    dex = _pokedex(cfg, dev, log)
    real_dex: np.ndarray | None = None
    fake_dex: np.ndarray | None = None
    if dex is not None:
        real_dex = ref.features(f"dex-{dex.info['sha256'][:16]}", dex)
        fake_dex = dex(fake)
        metrics.update(_deep_feature_metrics(("fd_dex", "dex"), real_dex, fake_dex, cfg))
        metrics["precision_dex"], metrics["recall_dex"] = stats.precision_recall(
            real_dex, fake_dex, k=cfg.pr_k, seed=cfg.seed)
    rand = random_features(dev, cfg.batch_size)
    metrics["fd_random"] = stats.frechet_distance_features(ref.features(f"random-seed{RANDOM_NET_SEED}", rand),
                                                           rand(fake))

    try:
        inception = InceptionFeatureExtractor(weights=cfg.inception_weights, batch_size=cfg.batch_size, device=dev)
    except MissingWeightsError as exc:  # UnusableWeightsError (corrupt or wrong file) included
        log(f"fid, kid_inception skipped: {exc}")
    else:
        metrics.update(
            _deep_feature_metrics(("fid", "inception"), ref.features("inception", inception), inception(fake), cfg)
        )
    if any(name.startswith("kid_") for name in metrics):
        n_real = len(ref.indices)
        m = stats.kid_subset_size(n_real, len(fake), cfg.kid_subset_size)
        metrics["kid_subset_size"] = m
        full = [name for name, n in (("fakes", len(fake)), ("reals", n_real)) if m == n]
        if full:
            log(f"kid subsets of {m} hold all the {' and '.join(full)}, so kid_*_std understates the uncertainty; "
                f"set evaluate.kid_subset_size below {min(n_real, len(fake))}")

    # Novelty: every sample counts for the score; the first novelty_samples are drawn.
    n_show = min(cfg.novelty_samples, len(fake))
    # Pixel space: the whole training array (memory-mapped), threshold included.
    mems = [("pixel", novelty.pixel_memorization(fake, ref.dataset.array, percentile=cfg.memorization_percentile,
                                                   k=3, seed=cfg.seed), ref.dataset.array, "training images")]
    if real_eff is not None and fake_eff is not None:
        # Feature space: only the reference draw has features (all of them would take minutes on a CPU).
        mem = novelty.memorization(fake_eff, real_eff, percentile=cfg.memorization_percentile, k=3, seed=cfg.seed)
        mems.append(("effnet", mem, real, f"of the {len(real)} reference images"))
    if real_dex is not None and fake_dex is not None:
        mem = novelty.memorization(fake_dex, real_dex, percentile=cfg.memorization_percentile, k=3, seed=cfg.seed)
        mems.append(("dex", mem, real, f"of the {len(real)} reference images"))
    for space, mem, searched, what in mems:
        metrics["memorization" if space == "pixel" else f"memorization_{space}"] = mem.score
        if n_show:
            fig = novelty.nearest_rows_figure(
                fake[:n_show], searched, mem.nn_index[:n_show], mem.nn_distance[:n_show], mem.threshold,
                f"sample | 3 nearest {what} ({space} space)\n"
                f"red frame: within {mem.threshold:.3g} (a copy)",
            )
            save_png(fig, reports_dir / f"novelty_{space}.png")

    if cfg.champion_metric not in metrics:
        log(f"evaluate.champion_metric={cfg.champion_metric!r} was not computed (have: {', '.join(sorted(metrics))})")
    ticks_path = Path(ticks) if ticks is not None else out_dir / TICKS_NAME
    write_reports(
        G, reports_dir, seed=cfg.seed, truncation_psi=cfg.truncation_psi, grid_size=cfg.report_grid_size,
        interpolation_steps=cfg.interpolation_steps,
        ticks=ticks_path if (ticks is not None or ticks_path.is_file()) else None, log=log,
    )
    if dex is not None and cfg.explain_samples > 0:
        write_looks_like(G, dex, reports_dir, seed=cfg.seed, n=cfg.explain_samples,
                         truncation_psi=cfg.truncation_psi)
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    atomic_write_json(out_dir / metrics_file, metrics)
    return metrics


def _pokedex(cfg: EvaluateConfig, device: torch.device, log: Callable[[str], None]) -> Pokedex | None:
    if cfg.pokedex is None:
        log("fd_dex, kid_dex, precision_dex, recall_dex, looks like skipped: evaluate.pokedex is null")
        return None
    try:
        return load_pokedex(cfg.pokedex, device=device)
    except PokedexError as exc:
        log(f"fd_dex, kid_dex, precision_dex, recall_dex, looks like skipped: {exc}")
        return None


def random_features(device: torch.device, batch_size: int = 64) -> Pokedex:
    """fd_random's feature extractor: the Pokédex architecture at a seeded random init."""
    net = random_network(seed=RANDOM_NET_SEED)
    info = {"species_ids": [0, 1], "names": ["-", "-"], "sha256": f"random-seed{RANDOM_NET_SEED}"}
    return Pokedex(net, info, batch_size=batch_size, device=device)


def write_looks_like(G: torch.nn.Module, dex: Pokedex, reports_dir: str | Path, *, seed: int, n: int,
                     truncation_psi: float) -> list[Explanation]:
    """reports/looks_like.png (seeds ``seed..seed+n-1``, each tile captioned with its name and top-3
    species) and reports/looks_like.json (the same as data)."""
    seeds = list(range(seed, seed + n))
    images = sampling.generate(G, seeds=seeds, truncation_psi=truncation_psi)
    found = explain(dex, images)
    captions = [[f"{s}: {e.name}", *(str(m) for m in e.looks_like)] for s, e in zip(seeds, found, strict=True)]
    reports_dir = Path(reports_dir)
    save_png(captioned_grid(images, captions), reports_dir / "looks_like.png")
    atomic_write_json(reports_dir / "looks_like.json",
                      {"truncation_psi": truncation_psi, "pokedex_sha256": dex.info["sha256"],
                       "samples": {str(s): e.to_dict() for s, e in zip(seeds, found, strict=True)}})
    return found
