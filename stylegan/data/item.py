"""One input -> its manifest rows and packed images: what a decode worker runs per file.

Shared by ``prepare`` (in-process ``prepare_chunk``) and ``workers`` (the supervised pool), so
neither imports the other for it.
"""

from __future__ import annotations

import hashlib
import zipfile
from typing import Any

import numpy as np

from stylegan.config import DataConfig
from stylegan.data.decode import (
    Decoded,
    Rejected,
    clean_detail,
    decode_raster,
    is_svg,
    max_file_bytes,
    read_bytes,
    rejection,
    render_svg,
)
from stylegan.data.sources import InputItem
from stylegan.data.transforms import pyramid, square
from stylegan.data.writer import FrameResult


def _row(item: InputItem, meta: Decoded | None, frame: int, **kw: Any) -> dict[str, Any]:
    row = {
        "source": item.path,
        "frame": frame,
        "n_frames": meta.n_frames if meta else 0,
        "species_id": item.species_id,
        "form": item.form,
        "variant": item.variant,
        "width": meta.width if meta else 0,
        "height": meta.height if meta else 0,
        "mode": meta.mode if meta else "",
        "format": meta.format if meta else "",
        "content_hash": "",
        "status": "ok",
        "reason": "",
        "detail": "",
        "index": -1,
    }
    row.update(kw)
    return row


def rejected_rows(item: InputItem, code: str, detail: str) -> list[FrameResult]:
    """The one manifest row of an input rejected outside the decoder (a crash, a timeout)."""
    return [FrameResult(_row(item, None, -1, status="rejected", reason=code, detail=detail))]


def _frame_result(item: InputItem, meta: Decoded, index: int, frame: np.ndarray, cfg: DataConfig) -> FrameResult:
    try:
        images = pyramid(square(frame, cfg), cfg)
    except Rejected as rej:
        return FrameResult(_row(item, meta, index, status="rejected", reason=rej.code, detail=rej.detail))
    digest = hashlib.blake2b(images[-1].tobytes(), digest_size=16).hexdigest()
    return FrameResult(_row(item, meta, index, content_hash=digest), images)


def prepare_item(item: InputItem, cfg: DataConfig, zips: dict[str, zipfile.ZipFile] | None = None) -> list[FrameResult]:
    """All manifest rows (one per used frame, or one rejection) of one input.

    Never raises for a bad file (only KeyboardInterrupt/SystemExit pass): whatever goes wrong
    rejects this one input, so one hostile file cannot stop the run.
    """
    if item.reject is not None:
        return rejected_rows(item, item.reject, item.detail)
    meta: Decoded | None = None
    out: list[FrameResult] = []
    try:
        data = read_bytes(item, zips if zips is not None else {}, max_file_bytes(cfg))
        meta = render_svg(data, cfg) if is_svg(item, data) else decode_raster(data, item, cfg)
        # Each frame is decoded, prepared and dropped before the next (bounded memory); a
        # frame that fails to decode still rejects the whole file, as one row.
        for index, frame in meta.frames:
            out.append(_frame_result(item, meta, index, frame, cfg))
    except Exception as exc:
        rej = rejection(exc, meta)
        row = _row(item, rej.meta, -1, status="rejected", reason=rej.code, detail=clean_detail(rej.detail, item))
        return [FrameResult(row)]
    finally:
        close = getattr(meta.frames if meta is not None else None, "close", None)
        if close is not None:
            close()  # a generator left mid-way: leave its warnings context now
    return out
