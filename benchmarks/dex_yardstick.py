"""Does the Pokédex's feature space rank images as a person would? Real vs held-out real, and reals
made clearly worse (blurred, colour-noised, flat blobs), in fd_dex / precision_dex / recall_dex next
to fd_random, fd_effnet and SWD, under evaluate's protocol (the num_real reference draw against
as many other images as evaluate.num_samples).

    python benchmarks/dex_yardstick.py --data data/prepared --pokedex models/pokedex
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from stylegan.config import EvaluateConfig
    from stylegan.metrics import stats
    from stylegan.metrics.evaluate import random_features
    from stylegan.metrics.reference import ReferenceSet
    from stylegan.metrics.swd import swd
    from stylegan.pokedex import load_pokedex
    from stylegan.training.effnet import FeatureExtractor, MissingWeightsError
    from tests.helpers import blob_images, blur

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--pokedex", default="models/pokedex")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--num-real", type=int, default=2000)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = EvaluateConfig(num_real=args.num_real, num_samples=args.num_samples, cache_dir="data/cache")
    ref = ReferenceSet(args.data, args.resolution, num_real=cfg.num_real, seed=cfg.seed, cache_dir=cfg.cache_dir)
    others = np.setdiff1d(np.arange(len(ref.dataset)), ref.indices)
    held = np.sort(np.random.RandomState(1).choice(others, cfg.num_samples, replace=False))
    held_out = ref.dataset.get_batch(held).numpy()
    rng = np.random.RandomState(2)
    noisy = np.clip(held_out.astype(np.int16) + rng.randint(-48, 49, held_out.shape), 0, 255).astype(np.uint8)
    candidates = {"held-out real": held_out, "blurred (sigma 1)": blur(held_out, 1.0),
                  "colour noise (+-48)": noisy, "flat blobs on white": blob_images(cfg.num_samples, 3, args.resolution)}
    dex = load_pokedex(args.pokedex)
    rand = random_features(torch.device("cpu"))
    spaces = {"dex": (dex, ref.features(f"dex-{dex.info['sha256'][:16]}", dex)),
              "random": (rand, ref.features("random-seed0", rand))}
    try:
        eff = FeatureExtractor()
        spaces["effnet"] = (eff, ref.features("effnet", eff))
    except MissingWeightsError:
        pass
    print(f"Pokédex {args.pokedex}: held-out top-1 {dex.info.get('top1')}, top-5 {dex.info.get('top5')}; "
          f"reference {len(ref.indices)} images, each candidate {cfg.num_samples} others")
    print("| candidate | fd_dex | precision_dex | recall_dex | fd_random | fd_effnet | SWD |")
    print("|---|---|---|---|---|---|---|")
    for label, images in candidates.items():
        row = {}
        for space, (net, real) in spaces.items():
            fake = net(images)
            row[space] = stats.frechet_distance_features(real, fake)
            if space == "dex":
                row["p"], row["r"] = stats.precision_recall(real, fake, k=cfg.pr_k, seed=cfg.seed)
        s = swd(ref.images, images, min_resolution=16, seed=0)["swd"]
        print(f"| {label} | {row['dex']:.3f} | {row['p']:.3f} | {row['r']:.3f} | {row['random']:.4f} | "
              f"{row.get('effnet', float('nan')):.2f} | {s:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
