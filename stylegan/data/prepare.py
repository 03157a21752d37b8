"""Validated images -> manifest + packed multi-resolution arrays.

The work splits in three steps so an orchestrator can run the middle one in parallel:

1. ``list_inputs(cfg)`` (in ``sources``): every input, sorted by path;
2. ``prepare_chunk(items, cfg)`` for each contiguous slice (``split_chunks``): decode,
   check, composite, crop, pad, resize; pure and independent per slice;
3. ``write_prepared(chunk_results_in_order, cfg, out_dir)``: drop exact duplicates, write
   the arrays, the manifest and the summary into a temp folder, then swap it in.

``prepare(cfg)`` runs all three with a process pool. Output depends only on the inputs and
params (never on the number of workers or chunks): same bytes every time.

Per image: alpha (GIF transparency too) is composited onto ``data.background``; the
content box (non-transparent pixels, or pixels that differ from the background for opaque
images) is cropped, padded to a square with ``data.margin`` and resampled once to
``data.max_resolution`` with ``data.resize_filter``. The lower levels are exact 2x2 means
of the level above (rounded), as ProGAN's dataset tool does: each level then equals the
average-pooled level above it, which is what the trainer's fade-in between resolutions
blends, and pixel art is area-averaged instead of re-filtered at every scale.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import shutil
import struct
import sys
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from stylegan.config import DataConfig, load_params, section, set_override, to_dict
from stylegan.data.sources import InputItem, list_inputs, package_name, uses_package

MANIFEST_COLUMNS = [
    "source", "frame", "n_frames", "species_id", "form", "variant", "width", "height", "mode",
    "format", "content_hash", "status", "reason", "detail", "index",
]  # fmt: skip
BG_TOLERANCE = 8  # opaque images: a pixel is content when a channel differs from the background by more
_FILTERS = {
    "area": Image.Resampling.BOX,  # exact area averaging when shrinking; crisp blocks when enlarging
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_NPY_HEADER = 128  # fixed .npy header size, so arrays can be streamed before N is known
# Only these formats' extra frames are animation frames: an MPO's second frame is a preview or
# the other eye of a stereo pair, a TIFF's pages are separate images (APNG opens as PNG).
_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# Decoded pixels of all the frames of one file, as a multiple of data.max_pixels: bounds the
# time a tiny GIF with a huge canvas and thousands of frames can take (sprites: 96x96x~100).
ANIMATION_PIXEL_FACTOR = 25
SVG_MAX_BYTES = 16 << 20  # raw or gunzipped SVG text; the dream-world artwork is well under 1 MiB
# Settings that do not change a single output byte of the images: kept out of summary.json, so
# that changing them (or cloning the repo elsewhere) leaves data/prepared, its DVC hash, as it was.
_RUN_ONLY_PARAMS = ("out_dir", "raw_dir", "workers")


class Rejected(Exception):
    """An input that cannot be used; ``code`` is the manifest's reason."""

    def __init__(self, code: str, detail: str = "", meta: _Meta | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.meta = meta  # what was known of the file (size, mode) when it was rejected


@dataclass
class FrameResult:
    """One manifest row and, when usable, the image at every resolution (uint8 CHW, 4 first)."""

    row: dict[str, Any]
    images: list[np.ndarray] | None = None


@dataclass
class _Meta:
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    n_frames: int = 0  # 0 = not known (rejected before counting)
    # (frame index, HxWx3|4 uint8), decoded lazily: one file's frames are never all in memory
    frames: Iterable[tuple[int, np.ndarray]] = field(default_factory=list)


def load_data_config(params: str | Path | None = None, overrides: Sequence[str] | None = None) -> DataConfig:
    """The typed ``data`` section of a params file (None: ./params.yaml if present, else defaults).

    ``overrides`` are ``key=value`` or ``data.key=value`` strings (as ``dvc exp run -S`` writes).
    """
    path = params if params is not None else ("params.yaml" if Path("params.yaml").exists() else None)
    values = load_params(path) if path is not None else {}
    for assignment in overrides or []:
        set_override(values, assignment if assignment.startswith("data.") else f"data.{assignment}")
    return section(values, "data")


def resolutions(max_resolution: int) -> list[int]:
    return [2**i for i in range(2, max_resolution.bit_length())]


# ---------------------------------------------------------------- decoding


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Clean up after earlier prepares that were killed: their temp folders (gigabytes at
    256x256) and the old outputs they had swapped out.

    Both are named after their writer's pid; one whose process still runs is left alone (our
    own pid's are leftovers too: in a container every run may get the same pid). A run killed
    between the two renames of the swap left no ``out_dir``: its old output is put back.
    """
    for kind in ("tmp", "old"):
        for folder in sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*")):
            pid = folder.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or (int(pid) != os.getpid() and _pid_alive(int(pid))):
                continue
            if kind == "old" and not out_dir.exists() and (folder / "summary.json").is_file():
                os.replace(folder, out_dir)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def max_file_bytes(cfg: DataConfig) -> int:
    """The largest input file read: 16 bytes per pixel of data.max_pixels (16-bit RGBA with room
    for several frames) plus 16 MiB of metadata; anything bigger cannot be a usable image."""
    return 16 * cfg.max_pixels + (16 << 20)


def _read_bytes(item: InputItem, zips: dict[str, zipfile.ZipFile], cap: int) -> bytes:
    if item.data is not None:
        return item.data  # the npm package's files, pinned by its integrity hash
    too_big = f"above the {cap:,}-byte cap (16 x data.max_pixels + 16 MiB)"
    try:
        if item.file is not None:
            with open(item.file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > cap:
                    raise Rejected("decompression_bomb", f"{size:,} bytes, {too_big}")
                data = f.read(cap + 1)
        elif item.zip_path is not None:
            zf = zips.get(item.zip_path)
            if zf is None:
                zf = zips[item.zip_path] = zipfile.ZipFile(item.zip_path)
            info = zf.getinfo(item.path)
            if info.file_size > cap:  # judged from the header, before inflating anything
                raise Rejected("decompression_bomb", f"zip entry inflates to {info.file_size:,} bytes, {too_big}")
            with zf.open(info) as f:
                data = f.read(cap + 1)
        else:
            raise Rejected("unreadable", "no data")
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, KeyError, EOFError, zlib.error) as exc:
        raise Rejected("unreadable", str(exc)) from exc
    if len(data) > cap:  # the file grew, or a zip header understated the size
        raise Rejected("decompression_bomb", f"more than {cap:,} bytes, {too_big}")
    return data


def _sixteen_bit(im: Image.Image) -> bool | None:
    """Whether integer grey samples are 16-bit (to be scaled to 8), judged from the mode and
    format rather than the pixel values, so that a dark 16-bit image stays dark.

    None: the file does not say (e.g. a 32-bit integer TIFF); the values then decide.
    """
    if im.mode.startswith("I;16"):
        return True
    if im.mode != "I":
        return False
    if im.format in ("PNG", "PPM"):  # these plugins give mode I only for 16-bit samples
        return True
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        if bits in (8, 16):
            return bits == 16
    return None


def _to_array(im: Image.Image, sixteen: bool | None = None) -> np.ndarray:
    """HxWx3 or HxWx4 uint8 from any PIL mode (16-bit scaled, not clipped; see ``_sixteen_bit``)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if sixteen is None:  # unknown depth: values above 8 bits mean 16-bit samples
            sixteen = mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255)
        if sixteen:
            a = a * (255.0 / 65535.0)  # 16-bit grey to 8 bits
        g = np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = "A" in mode or "a" in mode or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


def _frame_key(a: np.ndarray) -> bytes:
    return hashlib.blake2b(a, digest_size=16).digest()  # hashes the buffer, no copy


def _spaced(n: int, k: int) -> list[int]:
    """k evenly spaced indices of range(n), first and last included (distinct for k <= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return [(2 * j * (n - 1) + (k - 1)) // (2 * (k - 1)) for j in range(k)]


_SIGNATURES = (b"\x89PNG", b"GIF87a", b"GIF89a", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
    """A known image signature: such a file that fails to open is corrupt, not a non-image."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _rejection(exc: Exception, meta: _Meta | None, prefix: str = "") -> Rejected:
    """The manifest reason for anything decoding raised: a plugin or its EXIF/metadata parser
    can raise almost any type (KeyError, TypeError, struct.error, ...) on a hostile file."""
    if isinstance(exc, Rejected):
        exc.meta = exc.meta or meta
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return Rejected("decompression_bomb", str(exc), meta)
    if isinstance(exc, MemoryError):
        return Rejected("decompression_bomb", "out of memory while decoding", meta)
    if isinstance(exc, (OSError, EOFError, SyntaxError, ValueError, struct.error, IndexError)):
        return Rejected("corrupt", f"{prefix}{exc}", meta)
    return Rejected("corrupt", f"{prefix}{type(exc).__name__}: {exc}", meta)


def _decode_raster(data: bytes, item: InputItem, cfg: DataConfig) -> _Meta:
    """Open and check the file; ``frames`` then decodes the used frames one at a time."""
    meta = _Meta()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            if _looks_like_image(data):
                raise Rejected("corrupt", "image signature, but the file does not decode") from exc
            raise Rejected("not_an_image", "unrecognised format" if data else "empty file") from exc
        except Exception as exc:  # a bomb Pillow refuses in the header: its message gives the size
            raise _rejection(exc, None) from exc
        meta.width, meta.height = im.size
        meta.mode, meta.format = im.mode, im.format or ""
        if meta.width * meta.height > cfg.max_pixels:
            raise Rejected(
                "decompression_bomb", f"{meta.width}x{meta.height} exceeds data.max_pixels={cfg.max_pixels}", meta
            )
        if min(meta.width, meta.height) < cfg.min_size:
            raise Rejected("too_small", f"{meta.width}x{meta.height} is below data.min_size={cfg.min_size}", meta)
        try:
            meta.n_frames = int(getattr(im, "n_frames", 1))
        except Exception as exc:
            raise _rejection(exc, meta, "truncated or corrupt: ") from exc
    animated = meta.n_frames > 1 and meta.format in _ANIMATED_FORMATS
    wanted = meta.n_frames if animated and (item.animation or cfg.gif_frames == "all") else 1
    if wanted * meta.width * meta.height > ANIMATION_PIXEL_FACTOR * cfg.max_pixels:
        raise Rejected(
            "decompression_bomb",
            f"{wanted} frames of {meta.width}x{meta.height} exceed {ANIMATION_PIXEL_FACTOR} x data.max_pixels",
            meta,
        )
    meta.frames = _raster_frames(im, meta, item, cfg, animated, wanted)
    return meta


def _raster_frames(
    im: Image.Image, meta: _Meta, item: InputItem, cfg: DataConfig, animated: bool, wanted: int
) -> Iterator[tuple[int, np.ndarray]]:
    sixteen = _sixteen_bit(im)
    budget = ANIMATION_PIXEL_FACTOR * cfg.max_pixels

    def frame(i: int) -> np.ndarray:
        # A GIF's canvas can grow on seek past its header's size: count what is really decoded.
        nonlocal budget
        im.seek(i)
        w, h = im.size
        budget -= w * h
        if w * h > cfg.max_pixels or budget < 0:
            raise Rejected("decompression_bomb", f"frame {i} is {w}x{h}: more than data.max_pixels per frame "
                           f"or {ANIMATION_PIXEL_FACTOR} x data.max_pixels over the file", meta)
        return _to_array(im, sixteen)

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if not animated:  # stills, and an MPO's or a TIFF's first image: upright by EXIF
                im.load()
                yield 0, _to_array(ImageOps.exif_transpose(im), sixteen)
            elif not item.animation:
                for i in range(wanted):
                    yield i, frame(i)
            else:
                yield from _sprite_frames(frame, meta.n_frames, cfg)
        except Exception as exc:
            raise _rejection(exc, meta, "truncated or corrupt: ") from exc


def _sprite_frames(
    frame: Callable[[int], np.ndarray], n_frames: int, cfg: DataConfig
) -> Iterator[tuple[int, np.ndarray]]:
    """npm sprites: the distinct frames (by their decoded RGBA), ``frames_per_sprite`` evenly spaced.

    Which frames are used is known only after all are decoded. Their arrays are kept meanwhile
    while they fit in data.max_pixels (always, for 96x96 sprites); past that only the hashes
    are, and the chosen frames are decoded again (seeking back in a GIF replays it from the
    start, so that costs about one more full decode, within the same pixel budget).
    """
    seen: set[bytes] = set()
    distinct: list[int] = []
    kept: dict[int, np.ndarray] | None = {}
    kept_pixels = 0
    for i in range(n_frames):
        a = frame(i)
        key = _frame_key(a)
        if key in seen:
            continue
        seen.add(key)
        distinct.append(i)
        if kept is not None:
            kept_pixels += a.shape[0] * a.shape[1]
            if kept_pixels <= cfg.max_pixels:
                kept[i] = a
            else:
                kept = None
    for i in (distinct[j] for j in _spaced(len(distinct), cfg.frames_per_sprite)):
        yield i, kept.pop(i) if kept is not None else frame(i)


def _svg_text(data: bytes) -> bytes:
    """The SVG's XML; an svgz is inflated here with a bound (cairosvg would inflate it whole)."""
    if data[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=31)
        try:
            text = inflater.decompress(data, SVG_MAX_BYTES + 1)
        except zlib.error as exc:
            raise Rejected("corrupt", f"gzip'd SVG does not inflate: {exc}") from exc
        if len(text) > SVG_MAX_BYTES:
            raise Rejected("decompression_bomb", f"gzip'd SVG inflates past {SVG_MAX_BYTES:,} bytes")
        return text
    if len(data) > SVG_MAX_BYTES:
        raise Rejected("decompression_bomb", f"SVG of {len(data):,} bytes, above {SVG_MAX_BYTES:,}")
    return data


def _render_svg(data: bytes, cfg: DataConfig) -> _Meta:
    try:
        import cairosvg  # optional: `pip install pokegan[svg]`
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise Rejected("svg_unsupported", "install cairosvg (pokegan[svg]) to render SVG files") from exc
    side = 4 * cfg.max_resolution  # oversample: the content box is then area-averaged down
    text = _svg_text(data)
    try:
        # unsafe=False: no XML entities, and cairosvg's fetcher then loads data: URLs only,
        # never files or network resources an SVG points to.
        png = cairosvg.svg2png(bytestring=text, output_width=side, unsafe=False)
    except Exception as exc:  # cairosvg raises many types on bad XML/geometry
        raise Rejected("corrupt", f"SVG does not render: {type(exc).__name__}: {exc}") from exc
    meta = _Meta(mode="SVG", format="SVG", n_frames=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(png))  # a tall, thin SVG renders to many pixels
            meta.width, meta.height = im.size
            if im.width * im.height > cfg.max_pixels:
                raise Rejected("decompression_bomb", f"renders to {im.width}x{im.height}", meta)
            meta.frames = [(0, np.asarray(im.convert("RGBA")))]
        except Exception as exc:
            raise _rejection(exc, meta) from exc
    return meta


def _is_svg(item: InputItem, data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return item.path.lower().endswith((".svg", ".svgz")) or head.startswith(b"<svg") or (
        head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()
    )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs in messages: differ on every run
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/'\"]+){2,}")


def _clean_detail(text: str, item: InputItem) -> str:
    """A manifest detail that is the same wherever the source lives and on every run: no
    absolute paths (the source-relative one instead), no memory addresses, not too long."""
    if item.file:
        text = text.replace(item.file, item.path)
    if item.zip_path:
        text = text.replace(item.zip_path, Path(item.zip_path).name)
    text = _ADDRESS.sub("", text)
    text = _ABS_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], text)
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- image pipeline


def _square(a: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Composite onto the background, crop to the content box, pad to a square with margin."""
    bg = np.asarray(cfg.background, dtype=np.uint8)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.uint16)
        mask = a[..., 3] > 0
        rgb = ((a[..., :3] * alpha + bg.astype(np.uint16) * (255 - alpha) + 127) // 255).astype(np.uint8)
    else:
        rgb = a
        mask = (np.abs(a.astype(np.int16) - bg.astype(np.int16)) > BG_TOLERANCE).any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise Rejected("empty", "no content: every pixel is transparent or background")
    crop = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape[:2]
    side = max(h, w)
    pad = round(cfg.margin * side)
    size = side + 2 * pad
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[...] = bg
    y, x = (size - h) // 2, (size - w) // 2
    out[y : y + h, x : x + w] = crop
    return out


def _pyramid(square: np.ndarray, cfg: DataConfig) -> list[np.ndarray]:
    """[4x4, 8x8, ..., max] uint8 CHW; the top by the chosen filter, the rest by exact 2x2 means."""
    r = cfg.max_resolution
    if square.shape[0] == r:
        top = square
    else:
        top = np.asarray(Image.fromarray(square).resize((r, r), _FILTERS[cfg.resize_filter]))
    levels = [top]
    x = top
    while x.shape[0] > 4:
        x16 = x.astype(np.uint16)
        x = ((x16[0::2, 0::2] + x16[1::2, 0::2] + x16[0::2, 1::2] + x16[1::2, 1::2] + 2) >> 2).astype(np.uint8)
        levels.append(x)
    return [np.ascontiguousarray(lv.transpose(2, 0, 1)) for lv in reversed(levels)]


def _row(item: InputItem, meta: _Meta | None, frame: int, **kw: Any) -> dict[str, Any]:
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


def _frame_result(item: InputItem, meta: _Meta, index: int, frame: np.ndarray, cfg: DataConfig) -> FrameResult:
    try:
        images = _pyramid(_square(frame, cfg), cfg)
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
        return [FrameResult(_row(item, None, -1, status="rejected", reason=item.reject, detail=item.detail))]
    meta: _Meta | None = None
    out: list[FrameResult] = []
    try:
        data = _read_bytes(item, zips if zips is not None else {}, max_file_bytes(cfg))
        meta = _render_svg(data, cfg) if _is_svg(item, data) else _decode_raster(data, item, cfg)
        # Each frame is decoded, prepared and dropped before the next (bounded memory); a
        # frame that fails to decode still rejects the whole file, as one row.
        for index, frame in meta.frames:
            out.append(_frame_result(item, meta, index, frame, cfg))
    except Exception as exc:
        rej = _rejection(exc, meta)
        row = _row(item, rej.meta, -1, status="rejected", reason=rej.code, detail=_clean_detail(rej.detail, item))
        return [FrameResult(row)]
    finally:
        close = getattr(meta.frames if meta is not None else None, "close", None)
        if close is not None:
            close()  # a generator left mid-way: leave its warnings context now
    return out


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


# ---------------------------------------------------------------- writing


def _npy_header(n: int, r: int) -> bytes:
    body = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, 3, {r}, {r}), }}"
    size = _NPY_HEADER - 10
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + (body.ljust(size - 1) + "\n").encode("latin1")


class PreparedWriter:
    """Streams chunk results (in input order) into ``out_dir`` via a temp folder swapped in at the end.

    Usage: ``with PreparedWriter(out_dir, cfg) as w: w.add(results); summary = w.finish()``.
    Leaving the block without ``finish`` (an error) removes the temp folder; the previous
    ``out_dir`` stays untouched.
    """

    def __init__(
        self,
        out_dir: str | Path,  # final folder (replaced only by finish())
        cfg: DataConfig,  # the data params (recorded in summary.json, less workers/out_dir/raw_dir)
        source_info: dict[str, Any] | None = None,  # extra facts for the summary; None = none
    ) -> None:
        self.out_dir = Path(out_dir)
        check_out_dir(self.out_dir)
        self.cfg = cfg
        self.source_info = dict(source_info or {})
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.out_dir)
        self.tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.res = resolutions(cfg.max_resolution)
        # open across add() calls; closed by finish() or abort()
        self.files = {r: open(self.tmp / f"images_{r}.npy", "wb") for r in self.res}  # noqa: SIM115
        for r, f in self.files.items():
            f.write(_npy_header(0, r))
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[str, str] = {}
        self.count = 0

    def add(self, results: Iterable[FrameResult]) -> None:
        for res in results:
            row = dict(res.row)
            if res.images is not None:
                first = self.seen.get(row["content_hash"])
                if first is not None:
                    row.update(status="duplicate", reason="duplicate", detail=f"same image as {first}")
                else:
                    self.seen[row["content_hash"]] = f"{row['source']}#{row['frame']}"
                    for r, img in zip(self.res, res.images, strict=True):
                        assert img.shape == (3, r, r), img.shape
                        self.files[r].write(img.tobytes())
                    row["index"] = self.count
                    self.count += 1
            self.rows.append(row)

    def summary(self) -> dict[str, Any]:
        df = self.manifest()
        by_variant: dict[str, dict[str, int]] = {}
        for (variant, status), n in df.groupby(["variant", "status"]).size().items():
            by_variant.setdefault(str(variant) or "(none)", {})[str(status)] = int(n)
        return {
            **self.source_info,
            "inputs": int(df["source"].nunique()),
            "rows": len(df),
            "images": self.count,
            "resolutions": self.res,
            "status": {k: int(v) for k, v in sorted(Counter(df["status"]).items())},
            "reasons": {k: int(v) for k, v in sorted(Counter(df.loc[df["reason"] != "", "reason"]).items())},
            "variants": dict(sorted(by_variant.items())),
            "params": {k: v for k, v in to_dict(self.cfg).items() if k not in _RUN_ONLY_PARAMS},
        }

    def manifest(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS)
        df["species_id"] = df["species_id"].astype("Int64")
        return df

    def finish(self) -> dict[str, Any]:
        """Seal the arrays, write manifest.csv and summary.json, swap the folder in; returns the summary."""
        if self.count == 0:
            summary = self.summary()
            self.abort()
            raise ValueError(
                f"nothing usable in the source: {summary['rows']} rows, reasons {summary['reasons']}; "
                "check data.source and the size/format limits"
            )
        for r, f in self.files.items():
            f.seek(0)
            f.write(_npy_header(self.count, r))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self.manifest().to_csv(self.tmp / "manifest.csv", index=False, lineterminator="\n")
        summary = self.summary()
        (self.tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
        if self.out_dir.exists():
            os.replace(self.out_dir, old)
        try:
            os.replace(self.tmp, self.out_dir)
        except BaseException:
            if old.exists() and not self.out_dir.exists():
                os.replace(old, self.out_dir)  # put the previous output back; the temp goes in __exit__
            raise
        if old.exists():
            shutil.rmtree(old)
        return summary

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.tmp.exists():
            self.abort()


def source_info(cfg: DataConfig) -> dict[str, Any]:
    """What the summary records about where the data came from."""
    if uses_package(cfg):
        return {"source": package_name(cfg), "package": cfg.package, "integrity": cfg.integrity, "subset": cfg.subset}
    return {"source": cfg.source}


def check_out_dir(out_dir: str | Path) -> None:
    """Refuse an out_dir that preparing would destroy: a file, or a folder that is not ours.

    The output swap replaces the whole folder, so a typo such as ``out_dir: data/raw`` (or the
    source itself) must fail before anything is moved, not delete what was there.
    """
    out_dir = Path(out_dir)
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise ValueError(
                f"data.out_dir {out_dir} cannot be a folder: {parent} is a file; pick another data.out_dir"
            )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "summary.json").is_file():
        raise ValueError(
            f"data.out_dir {out_dir} is a non-empty folder without summary.json, so not an earlier prepare "
            "output; it would be replaced as a whole: pick a new or empty data.out_dir"
        )


def write_prepared(
    chunk_results: Iterable[Sequence[FrameResult]],  # prepare_chunk outputs, in chunk order
    cfg: DataConfig,  # the data params
    out_dir: str | Path | None = None,  # None = cfg.out_dir
) -> dict[str, Any]:
    """Dedupe, write arrays + manifest + summary atomically; returns the summary."""
    with PreparedWriter(out_dir if out_dir is not None else cfg.out_dir, cfg, source_info(cfg)) as writer:
        for results in chunk_results:
            writer.add(results)
            del results  # not held while the next chunk is awaited
        return writer.finish()


def _chunk_worker(args: tuple[list[InputItem], DataConfig]) -> list[FrameResult]:
    return prepare_chunk(*args)


def prepare(
    cfg: DataConfig,  # the data params
    root: str | Path = ".",  # project root that relative source/raw/out paths hang off
    workers: int | None = None,  # processes; None = cfg.workers (0 = one per core)
    log: Callable[[str], None] | None = None,  # progress lines; None = stderr
) -> dict[str, Any]:
    """The whole preparation: list, prepare in parallel (order kept), write. Returns the summary."""
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
    if n_workers == 1:
        return write_prepared((prepare_chunk(c, cfg) for c in chunks), cfg, out_dir)
    with multiprocessing.get_context().Pool(n_workers) as pool:
        # imap keeps chunk order, so the output is the same for any worker count
        return write_prepared(pool.imap(_chunk_worker, [(c, cfg) for c in chunks]), cfg, out_dir)
