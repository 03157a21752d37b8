"""``evaluate_generator``: every metric of a generator against the prepared data, plus the reports.

Metrics (names as eval.json and MLflow carry them):
- ``swd``, ``swd_<R>``: sliced Wasserstein distance (x1e3) per Laplacian level, no weights needed;
- ``fd_effnet``, ``kid_effnet``, ``kid_effnet_std``, ``precision``, ``recall``: on
  EfficientNet-Lite0 ImageNet features (installed offline; FD-effnet is *not* comparable
  with published FIDs);
- ``fid``, ``kid_inception``, ``kid_inception_std``: standard Inception-v3 features, only
  when the FID weights are on disk;
- ``memorization`` (pixel space) and ``memorization_effnet``: share of samples that copy a
  training image.
Metrics whose network is missing are skipped with one line, never an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stylegan import sampling
from stylegan.config import EvaluateConfig
from stylegan.metrics import novelty, stats
from stylegan.metrics.effnet import FeatureExtractor, MissingWeightsError
from stylegan.metrics.inception import InceptionFeatureExtractor
from stylegan.metrics.reference import ReferenceSet, atomic_write_json
from stylegan.metrics.swd import swd
from stylegan.reports import save_png, write_reports

TICKS_NAME = "train_ticks.csv"  # the flows copy the trainer's tick log here, next to eval.json


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


def evaluate_generator(
    G: torch.nn.Module,  # a Generator (eval mode); its img_resolution picks images_<R>.npy
    data_root: str | Path,  # data/prepared
    cfg: EvaluateConfig,
    out_dir: str | Path,  # where the metrics JSON goes (metrics/)
    reports_dir: str | Path,  # where the figures go (reports/)
    *,
    metrics_file: str = "eval.json",  # name of the JSON under out_dir
    ticks: str | Path | None = None,  # training tick log for loss curves; None = out_dir/train_ticks.csv if present
    device: str | torch.device | None = None,  # feature networks; None = G's device
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

    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    fake = sampling.generate(
        G, seeds=seeds, truncation_psi=cfg.truncation_psi, noise_mode="const", batch_size=cfg.batch_size
    ).transpose(0, 3, 1, 2)
    fake = np.ascontiguousarray(fake)
    real = ref.images
    metrics: dict[str, float] = {}

    if res >= max(cfg.swd_min_resolution, 7):
        metrics.update(swd(real, fake, min_resolution=cfg.swd_min_resolution, seed=cfg.seed))
    else:
        log(f"swd skipped: {res}x{res} images are below evaluate.swd_min_resolution={cfg.swd_min_resolution}")

    fake_eff: np.ndarray | None = None
    real_eff: np.ndarray | None = None
    try:
        effnet = FeatureExtractor(batch_size=cfg.batch_size, device=dev)
    except MissingWeightsError as exc:
        log(f"fd_effnet, kid_effnet, precision, recall skipped: {exc}")
    else:
        real_eff = ref.features("effnet", effnet)
        fake_eff = effnet(fake)
        metrics.update(_deep_feature_metrics(("fd_effnet", "effnet"), real_eff, fake_eff, cfg))
        metrics["precision"], metrics["recall"] = stats.precision_recall(real_eff, fake_eff, k=cfg.pr_k)

    try:
        inception = InceptionFeatureExtractor(weights=cfg.inception_weights, batch_size=cfg.batch_size, device=dev)
    except MissingWeightsError as exc:
        log(f"fid, kid_inception skipped: {exc}")
    else:
        metrics.update(
            _deep_feature_metrics(("fid", "inception"), ref.features("inception", inception), inception(fake), cfg)
        )

    # Novelty: every sample counts for the score; the first novelty_samples are drawn.
    n_show = min(cfg.novelty_samples, len(fake))
    spaces = [("pixel", novelty.pixel_vectors(real), novelty.pixel_vectors(fake))]
    if real_eff is not None and fake_eff is not None:
        spaces.append(("effnet", real_eff, fake_eff))
    for space, ref_vec, fake_vec in spaces:
        mem = novelty.memorization(
            fake_vec, ref_vec, percentile=cfg.memorization_percentile, k=3, seed=cfg.seed
        )
        metrics["memorization" if space == "pixel" else f"memorization_{space}"] = mem.score
        if n_show:
            fig = novelty.nearest_rows_figure(
                fake[:n_show], real, mem.nn_index[:n_show], mem.nn_distance[:n_show], mem.threshold,
                f"sample | 3 nearest training images ({space} space)\n"
                f"red frame: closer than {mem.threshold:.3g} (a copy)",
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
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    atomic_write_json(out_dir / metrics_file, metrics)
    return metrics
