"""Validated images -> manifest + packed multi-resolution arrays.

The work splits in three steps so an orchestrator can run the middle one in parallel:

1. ``list_inputs(cfg)`` (in ``sources``): every input, sorted by path;
2. ``prepare_chunk(items, cfg)`` for each contiguous slice (``split_chunks``): decode,
   check, composite, crop, pad, resize; pure and independent per slice;
3. ``write_prepared(chunk_results_in_order, cfg, out_dir)``: drop exact duplicates, write
   the arrays, the manifest and the summary into a temp folder, then swap it in.

``prepare(cfg)`` runs all three, the middle one in supervised worker processes
(``workers.DecodePool``): a worker that crashes or overruns ``data.decode_timeout`` on a file
costs only that file (a ``crashed_decoder`` / ``timeout`` row) and is replaced. Output depends
only on the inputs and params (never on the number of workers or chunks): same bytes every time.

The steps live in their own modules: ``decode`` (opening and decoding one input within its
bounds), ``transforms`` (composite, crop, pad, resample, the 2x2 pyramid), ``item`` (one input's
rows and images, ``prepare_item``), ``writer`` (dedupe, arrays, manifest, summary, the atomic
swap) and ``workers`` (the supervised pool); their public names are importable from here as before.

Per image: alpha (GIF transparency too) is composited onto ``data.background``; the
content box (non-transparent pixels, or pixels that differ from the background for opaque
images) is cropped, padded to a square with ``data.margin`` and resampled once to
``data.max_resolution`` with ``data.resize_filter``. The lower levels are exact 2x2 means
of the level above (rounded), as ProGAN's dataset tool does: each level then equals the
average-pooled level above it, which is what the trainer's fade-in between resolutions
blends, and pixel art is area-averaged instead of re-filtered at every scale.
"""

from __future__ import annotations

import itertools
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps  # noqa: F401  (re-exported: tests patch Pillow through this module)

from stylegan.config import DataConfig, load_params, section
from stylegan.data.decode import (  # noqa: F401  (re-exported)
    ACCEPTED_FORMATS,
    ANIMATION_PIXEL_FACTOR,
    SVG_MAX_BYTES,
    Rejected,
    max_file_bytes,
)
from stylegan.data.item import prepare_item, rejected_rows  # noqa: F401  (re-exported)
from stylegan.data.sources import InputItem, list_inputs
from stylegan.data.transforms import BG_TOLERANCE, resolutions  # noqa: F401  (re-exported)
from stylegan.data.writer import (  # noqa: F401  (re-exported)
    MANIFEST_COLUMNS,
    FrameResult,
    PreparedWriter,
    check_out_dir,
    source_info,
    write_prepared,
)


def load_data_config(params: str | Path | None = None, overrides: Sequence[str] | None = None) -> DataConfig:
    """The typed ``data`` section of a params file (None: ./params.yaml if present, else defaults).

    ``overrides`` are ``key=value`` or ``data.key=value`` strings (as ``dvc exp run -S`` writes).
    """
    return section(load_params(params, [a if a.startswith("data.") else f"data.{a}" for a in overrides or []]), "data")


def prepare_chunk(items: Sequence[InputItem], cfg: DataConfig) -> list[FrameResult]:
    """Rows and images of a slice of inputs, in input order. Pure: safe to run in any process."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # PIL warns above this and raises above twice it
    zips: dict[str, zipfile.ZipFile] = {}
    try:
        return [r for item in items for r in prepare_item(item, cfg, zips)]
    finally:
        Image.MAX_IMAGE_PIXELS = saved
        for zf in zips.values():
            zf.close()


def split_chunks(items: Sequence[InputItem], n_chunks: int) -> list[list[InputItem]]:
    """Contiguous, order-preserving slices (concatenated they give ``items`` back)."""
    n_chunks = max(1, min(n_chunks, len(items)))
    bounds = [len(items) * i // n_chunks for i in range(n_chunks + 1)]
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds)]



def prepare(
    cfg: DataConfig,  # the data params
    root: str | Path = ".",  # project root that relative source/raw/out paths hang off
    workers: int | None = None,  # processes; None = cfg.workers (0 = one per core)
    log: Callable[[str], None] | None = None,  # progress lines; None = stderr
    worker_init: Callable[[], None] | None = None,  # run in each decode worker first (tracing); None = none
) -> dict[str, Any]:
    """The whole preparation: list, decode in supervised workers (order kept), write. Returns the summary."""
    from stylegan.data.workers import DecodePool

    say = log or (lambda s: print(s, file=sys.stderr))
    out_dir = Path(cfg.out_dir) if Path(cfg.out_dir).is_absolute() else Path(root) / cfg.out_dir
    check_out_dir(out_dir)  # before any work
    n_workers = workers if workers is not None else cfg.workers
    if n_workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per core), got {n_workers}")
    items = list_inputs(cfg, root)
    if not items:
        raise ValueError(f"data.source {cfg.source!r} holds no files")
    n_workers = n_workers or os.cpu_count() or 1
    chunks = split_chunks(items, max(1, n_workers * 8))  # small slices balance uneven files
    say(f"preparing {len(items)} inputs in {len(chunks)} chunks on {n_workers} process(es)")
    with DecodePool(cfg, workers=n_workers, initializer=worker_init, log=say) as pool:
        # in chunk order, so the output is the same for any worker count
        return write_prepared(pool.imap(chunks), cfg, out_dir)
