"""Images/s the training loader serves: random batches with random mirror flips, one core.

    python benchmarks/loader_throughput.py [--root data/prepared] [--resolution 64] [--batch 32] [--synthetic]
                                           [--step-ms 50]

Prints one line per access mode (memory map / in memory) and the machine load, since the
figure depends on what else runs. Target (issue 3): >= 20,000 images/s at 64x64.

When ``--root`` has no array at ``--resolution`` (the default CPU profile prepares only up to
32), or with ``--synthetic``, it measures random images of that resolution written to a temp
folder (as many as the prepared data holds, 28,582 without any), and says so on every line:
the loader's speed depends on the array's shape, not on what the pixels show.

It then measures what the training thread waits for per batch while a step "computes" for
``--step-ms`` (a sleep, as a GPU step leaves the host idle): gathering in line versus taking the
batch that ``stylegan.training.prefetch.BatchPrefetcher`` gathered in the background meanwhile.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stylegan.training.dataset import PackedDataset, array_path, available_resolutions
from stylegan.training.prefetch import BatchPrefetcher

SYNTHETIC_IMAGES = 30_000  # about the default sprites subset after dedupe, when there is no prepared data
SYNTHETIC_MAX_BYTES = 2 << 30  # fewer synthetic images at large resolutions, so they fit in memory and disk


def measure(ds: PackedDataset, batch: int, seconds: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    n = len(ds)
    ds.get_batch(rng.integers(0, n, batch), rng.random(batch) < 0.5)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x = ds.get_batch(rng.integers(0, n, batch), rng.random(batch) < 0.5)
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def training_thread_wait(ds: PackedDataset, batch: int, step_ms: float, prefetch: bool, steps: int = 40) -> float:
    """Mean ms per step the training thread spends getting its batch (the rest is the 'step')."""
    rng = np.random.default_rng(0)
    n = len(ds)
    pf = BatchPrefetcher(device=torch.device("cpu")) if prefetch else None
    if pf is not None:
        pf.submit(0, ds, rng.integers(0, n, batch))
    waited = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        x = pf.take(i) if pf is not None else ds.get_batch(rng.integers(0, n, batch))
        if pf is not None:
            pf.submit(i + 1, ds, rng.integers(0, n, batch))
        waited += time.perf_counter() - t0
        assert x.shape[0] == batch
        time.sleep(step_ms / 1000)  # the step: the host is free while the device computes
    if pf is not None:
        pf.close()
    return waited / steps * 1000


def write_synthetic(folder: Path, resolution: int, n: int, seed: int = 0) -> None:
    """``images_<R>.npy`` of n random uint8 images, written in blocks (never all in memory)."""
    n = max(1, min(n, SYNTHETIC_MAX_BYTES // (3 * resolution * resolution)))
    rng = np.random.default_rng(seed)
    arr = np.lib.format.open_memmap(array_path(folder, resolution), "w+", np.uint8, (n, 3, resolution, resolution))
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        arr[start:stop] = rng.integers(0, 256, (stop - start, 3, resolution, resolution), dtype=np.uint8)
    arr.flush()
    del arr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data/prepared")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--synthetic", action="store_true", help="random images even when --root has the resolution")
    ap.add_argument("--step-ms", type=float, default=50.0, help="simulated step time for the prefetch comparison")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root, source = args.root, args.root
        if args.synthetic or not array_path(args.root, args.resolution).exists():
            have = available_resolutions(args.root)
            n = len(PackedDataset(args.root, have[-1])) if have else SYNTHETIC_IMAGES  # as many as the real data
            if not args.synthetic:
                print(
                    f"note: no {args.resolution}x{args.resolution} array in {args.root} "
                    f"(available: {have or 'none'}); measuring synthetic random images of that size instead"
                )
            write_synthetic(Path(tmp), args.resolution, n)
            root, source = tmp, "synthetic"
        for mmap in (True, False):
            ds = PackedDataset(root, args.resolution, mmap=mmap)
            rate = measure(ds, args.batch, args.seconds)
            print(
                f"loader {args.resolution}x{args.resolution} batch {args.batch} mmap={mmap}: {rate:,.0f} images/s "
                f"(N={len(ds):,} {source} images, one thread; load average {os.getloadavg()[0]:.2f} "
                f"on {os.cpu_count()} cores)"
            )
            if mmap:
                for prefetch in (False, True):
                    wait = training_thread_wait(ds, args.batch, args.step_ms, prefetch)
                    print(
                        f"training thread waits {wait:.3f} ms per batch "
                        f"({'prefetched in the background' if prefetch else 'gathered in line'}; "
                        f"{args.step_ms:g} ms steps, mmap, load average {os.getloadavg()[0]:.2f})"
                    )
            del ds  # release the memory map before the temp folder goes


if __name__ == "__main__":
    main()
