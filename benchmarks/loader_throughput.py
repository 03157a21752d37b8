"""Images/s the training loader serves: random batches with random mirror flips, one core.

    python benchmarks/loader_throughput.py [--root data/prepared] [--resolution 64] [--batch 32]

Prints one line per access mode (memory map / in memory) and the machine load, since the
figure depends on what else runs. Target (issue 3): >= 20,000 images/s at 64x64.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from stylegan.data.dataset import PackedDataset


def measure(ds: PackedDataset, batch: int, seconds: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(ds)
    ds.get_batch(rng.integers(0, n, batch), rng.random(batch) < 0.5)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x = ds.get_batch(rng.integers(0, n, batch), rng.random(batch) < 0.5)
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data/prepared")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for mmap in (True, False):
        ds = PackedDataset(args.root, args.resolution, mmap=mmap)
        rate = measure(ds, args.batch, args.seconds)
        print(
            f"loader {args.resolution}x{args.resolution} batch {args.batch} mmap={mmap}: {rate:,.0f} images/s "
            f"(N={len(ds)}, one thread; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)"
        )


if __name__ == "__main__":
    main()
