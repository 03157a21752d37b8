"""Wall time of the data preparation on the default npm package (or any data.source).

    python benchmarks/prepare_speed.py [--max-resolution 64] [--subset sprites] [--workers 0] [--limit N]

Runs the real ``prepare`` (listing, integrity check, decoding, writing) into a temporary
folder and prints seconds, images/s and the counts, with the machine load next to them.
Targets (issue 3): the whole sprites subset up to 64 in < 5 min on 2 cores; up to 256 in < 10.
``--limit`` prepares only the first N inputs, for a quick figure on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

from stylegan.data import prepare as prep
from stylegan.data.prepare import load_data_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=None)
    ap.add_argument("--max-resolution", type=int, default=64)
    ap.add_argument("--subset", default=None, choices=["sprites", "artwork"])
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--limit", type=int, default=0, help="first N inputs only; 0 = all")
    args = ap.parse_args()
    cfg = load_data_config(args.params)
    cfg = replace(cfg, max_resolution=args.max_resolution, subset=args.subset or cfg.subset, workers=args.workers)
    real_list = prep.list_inputs
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        cfg = replace(cfg, out_dir=str(Path(tmp) / "prepared"))
        limited = (lambda c, r=".": real_list(c, r)[: args.limit]) if args.limit else real_list
        load0 = os.getloadavg()[0]
        start = time.perf_counter()
        with mock.patch.object(prep, "list_inputs", limited):
            summary = prep.prepare(cfg, log=lambda s: None)
        sec = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(cfg.out_dir).iterdir()) / 2**20
    print(
        f"prepare {summary.get('subset', cfg.source)} up to {cfg.max_resolution}: {sec:.1f} s for "
        f"{summary['inputs']} inputs / {summary['rows']} rows -> {summary['images']} images "
        f"({summary['rows'] / sec:,.0f} rows/s), {size:,.0f} MiB; status {summary['status']}; "
        f"workers {cfg.workers or os.cpu_count()}; load average {load0:.2f} -> {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
