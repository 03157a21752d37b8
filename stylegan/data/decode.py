"""Decoding one input: open it once and safely, check it against every bound, then give its
frames one at a time (HxWx3|4 uint8). Rasters go through Pillow with a format allow-list;
SVGs through cairosvg with a fetcher that loads only bounded ``data:`` URLs."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import os
import re
import stat
import struct
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stylegan.config import DataConfig
from stylegan.data.sources import InputItem

# Only these formats' extra frames are animation frames: an MPO's second frame is a preview or
# the other eye of a stereo pair, a TIFF's pages are separate images (APNG opens as PNG).
_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
# Decoded pixels of all the frames of one file, as a multiple of data.max_pixels: bounds the
# time a tiny GIF with a huge canvas and thousands of frames can take (sprites: 96x96x~100).
ANIMATION_PIXEL_FACTOR = 25
SVG_MAX_BYTES = 16 << 20  # raw or gunzipped SVG text; the dream-world artwork is well under 1 MiB


class Rejected(Exception):
    """An input that cannot be used; ``code`` is the manifest's reason."""

    def __init__(self, code: str, detail: str = "", meta: Decoded | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.meta = meta  # what was known of the file (size, mode) when it was rejected



@dataclass
class Decoded:
    """What decoding learned of one input (kept in its manifest rows), and its frames."""

    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    n_frames: int = 0  # 0 = not known (rejected before counting)
    # (frame index, HxWx3|4 uint8), decoded lazily: one file's frames are never all in memory
    frames: Iterable[tuple[int, np.ndarray]] = field(default_factory=list)


def max_file_bytes(cfg: DataConfig) -> int:
    """The largest input file read: 16 bytes per pixel of data.max_pixels (16-bit RGBA with room
    for several frames) plus 16 MiB of metadata; anything bigger cannot be a usable image."""
    return 16 * cfg.max_pixels + (16 << 20)


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_beneath(root: str, rel: str) -> int:
    """Open ``root/rel`` one component at a time, following no link: a folder or file that was
    swapped for a symlink after listing fails (ELOOP/ENOTDIR) instead of leading elsewhere."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise Rejected("unreadable", "not a plain path inside the source")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=dfd)  # O_NONBLOCK: a FIFO cannot block the open
    finally:
        os.close(dfd)


def _open_listed(item: InputItem) -> int:
    """A file descriptor of the regular file the listing saw, or ``Rejected``.

    Checked after opening (fstat): a regular file, and the same device and inode as when listed,
    so a file replaced by a link, a FIFO or another file between listing and reading is refused.
    """
    try:
        fd = _open_beneath(item.root, item.target) if item.root is not None else os.open(str(item.file), _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise Rejected("changed_since_listing", "replaced by a link or removed after listing; not read") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not_a_file", "not a regular file when opened")
        if item.ino and (st.st_dev, st.st_ino) != (item.dev, item.ino):
            raise Rejected("changed_since_listing", "a different file than the one listed; not read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(item: InputItem, zips: dict[str, zipfile.ZipFile], cap: int) -> bytes:
    if item.data is not None:
        return item.data  # the npm package's files, pinned by its integrity hash
    too_big = f"above the {cap:,}-byte cap (16 x data.max_pixels + 16 MiB)"
    try:
        if item.file is not None:
            with open(_open_listed(item), "rb") as f:  # owns (and closes) the descriptor
                size = os.fstat(f.fileno()).st_size
                if size > cap:
                    raise Rejected("decompression_bomb", f"{size:,} bytes, {too_big}")
                data = f.read(cap + 1)
        elif item.zip_path is not None:
            zf = zips.get(item.zip_path)
            if zf is None:
                zf = zips[item.zip_path] = zipfile.ZipFile(item.zip_path)
            info = zf.infolist()[item.entry] if item.entry >= 0 else zf.getinfo(item.path)
            if info.file_size > cap:  # judged from the header, before inflating anything
                raise Rejected("decompression_bomb", f"zip entry inflates to {info.file_size:,} bytes, {too_big}")
            with zf.open(info) as f:
                data = f.read(cap + 1)
        else:
            raise Rejected("unreadable", "no data")
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, KeyError, IndexError, EOFError, zlib.error) as exc:
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


def to_array(im: Image.Image, sixteen: bool | None = None) -> np.ndarray:
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
# Formats Pillow may parse here; every other plugin (EPS and PS hand the file to Ghostscript,
# PDF, PSD, ICO, JPEG 2000, FITS, ...) is never given the bytes. PPM covers PBM/PGM/PPM.
ACCEPTED_FORMATS = ("PNG", "GIF", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "PPM")
_OPEN_FORMATS = tuple(f for f in ACCEPTED_FORMATS if f != "MPO")  # Pillow's JPEG opener gives MPO itself


def _refused_format(data: bytes) -> str | None:
    """Which refused Pillow format the bytes claim to be, by the plugins' own signature checks
    (a prefix test each; no plugin opens the file); None = none claims it."""
    Image.init()
    head = data[:64]
    for fmt in Image.ID:
        accept = Image.OPEN.get(fmt, (None, None))[1]
        if fmt not in ACCEPTED_FORMATS and accept is not None:
            try:
                if accept(head):
                    return fmt
            except Exception:  # an accept() that wants more bytes than the head holds
                continue
    return None


def _looks_like_image(data: bytes) -> bool:
    """A known image signature: such a file that fails to open is corrupt, not a non-image."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def rejection(exc: Exception, meta: Decoded | None, prefix: str = "") -> Rejected:
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


def decode_raster(data: bytes, item: InputItem, cfg: DataConfig) -> Decoded:
    """Open and check the file; ``frames`` then decodes the used frames one at a time."""
    meta = Decoded()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
        except UnidentifiedImageError as exc:
            if _looks_like_image(data):
                raise Rejected("corrupt", "image signature, but the file does not decode") from exc
            refused = _refused_format(data)
            if refused is not None:
                raise Rejected("unsupported_format", f"{refused} is not an accepted format "
                               f"({', '.join(ACCEPTED_FORMATS)}, SVG); not decoded") from exc
            raise Rejected("not_an_image", "unrecognised format" if data else "empty file") from exc
        except Exception as exc:  # a bomb Pillow refuses in the header: its message gives the size
            raise rejection(exc, None) from exc
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
            raise rejection(exc, meta, "truncated or corrupt: ") from exc
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
    im: Image.Image, meta: Decoded, item: InputItem, cfg: DataConfig, animated: bool, wanted: int
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
        return to_array(im, sixteen)

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if not animated:  # stills, and an MPO's or a TIFF's first image: upright by EXIF
                im.load()
                yield 0, to_array(ImageOps.exif_transpose(im), sixteen)
            elif not item.animation:
                for i in range(wanted):
                    yield i, frame(i)
            else:
                yield from _sprite_frames(frame, meta.n_frames, cfg)
        except Exception as exc:
            raise rejection(exc, meta, "truncated or corrupt: ") from exc


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


_DATA_URL = re.compile(r"^data:([^,]*?)(;base64)?,", re.IGNORECASE | re.DOTALL)
_EMPTY_SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'


class _SvgFetcher:
    """cairosvg's url_fetcher: only ``data:`` URLs, each decoded within the file's budgets.

    Everything an SVG pulls in counts against one SVG_MAX_BYTES budget for the file (nested
    SVGs, gzip'd ones inflated here with that bound, so cairosvg never inflates anything);
    every embedded raster must be an accepted format within data.max_pixels, and all of them
    together within ANIMATION_PIXEL_FACTOR x data.max_pixels. ``file:``, ``http:`` and
    relative references load nothing. A breach is kept in ``refused`` and rejects the file.
    """

    def __init__(self, cfg: DataConfig, budget: int) -> None:
        self.cfg = cfg
        self.budget = budget  # bytes left for everything fetched
        self.pixels = ANIMATION_PIXEL_FACTOR * cfg.max_pixels  # embedded raster pixels left
        self.refused: Rejected | None = None
        self.cache: dict[str, bytes] = {}  # the same URL drawn twice is counted once

    def __call__(self, url: str, resource_type: str) -> bytes:
        if url in self.cache:
            return self.cache[url]
        try:
            data = self._fetch(url)
        except Rejected as rej:
            self.refused = self.refused or rej
            data = _EMPTY_SVG
        self.cache[url] = data
        return data

    def _take(self, n: int, what: str) -> None:
        self.budget -= n
        if self.budget < 0:
            raise Rejected("decompression_bomb", f"{what} takes the SVG past {SVG_MAX_BYTES:,} bytes in all")

    def _fetch(self, url: str) -> bytes:
        m = _DATA_URL.match(url or "")
        if m is None:
            return _EMPTY_SVG  # external and relative references are never fetched
        payload = url[m.end():]
        self._take(len(payload), "a data: URL")
        try:
            data = base64.b64decode(payload) if m.group(2) else urllib.parse.unquote_to_bytes(payload)
        except (ValueError, binascii.Error) as exc:
            raise Rejected("corrupt", f"SVG holds a bad data: URL: {exc}") from exc
        if data[:2] == b"\x1f\x8b":  # gzip'd (an svgz inside): inflated here, within the budget
            inflater = zlib.decompressobj(wbits=31)
            try:
                data = inflater.decompress(data, max(self.budget, 0) + 1)
            except zlib.error as exc:
                raise Rejected("corrupt", f"SVG holds a gzip'd data: URL that does not inflate: {exc}") from exc
            self._take(len(data), "an inflated data: URL")
        head = data[:512].lstrip()
        if head.startswith((b"<svg", b"<?xml", b"<!DOC")) or b"<svg" in data[:4096]:
            return data  # a nested SVG: parsed by cairosvg with this same fetcher, entities refused
        self._check_raster(data)
        return data

    def _check_raster(self, data: bytes) -> None:
        if len(data) < 5:
            return  # cairosvg draws nothing for these
        try:
            with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:  # refused by Pillow's own header check
            raise Rejected("decompression_bomb", f"SVG embeds an image that is too large: {exc}") from exc
        except Exception as exc:
            raise Rejected("corrupt", f"SVG embeds what is not an accepted raster: {type(exc).__name__}") from exc
        self.pixels -= w * h
        if w * h > self.cfg.max_pixels or self.pixels < 0:
            raise Rejected("decompression_bomb", f"SVG embeds a {w}x{h} image: more than data.max_pixels, or "
                           f"{ANIMATION_PIXEL_FACTOR} x data.max_pixels over all its embedded images")


def render_svg(data: bytes, cfg: DataConfig) -> Decoded:
    try:
        from cairosvg.surface import PNGSurface  # optional: `pip install pokegan[svg]`
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise Rejected("svg_unsupported", "install cairosvg (pokegan[svg]) to render SVG files") from exc
    side = 4 * cfg.max_resolution  # oversample: the content box is then area-averaged down
    text = _svg_text(data)
    meta = Decoded(mode="SVG", format="SVG", n_frames=1)
    fetcher = _SvgFetcher(cfg, SVG_MAX_BYTES - len(text))

    class BoundedPNG(PNGSurface):  # a tall, thin SVG would render to a huge canvas: refuse it first
        def _create_surface(self, width: float, height: float) -> tuple[Any, int, int]:
            meta.width, meta.height = round(width), round(height)
            if meta.width * meta.height > cfg.max_pixels:
                raise Rejected("decompression_bomb", f"renders to {meta.width}x{meta.height}, more than "
                               f"data.max_pixels={cfg.max_pixels}", meta)
            return super()._create_surface(width, height)

    try:
        # unsafe=False: defusedxml refuses XML entities and external DTDs; the fetcher loads
        # bounded data: URLs only, never files or network resources an SVG points to.
        png = BoundedPNG.convert(bytestring=text, output_width=side, unsafe=False, url_fetcher=fetcher)
    except Rejected:
        raise
    except Exception as exc:  # cairosvg raises many types on bad XML/geometry
        if type(exc).__module__.startswith("defusedxml"):
            raise Rejected("unsafe_svg", f"SVG refused: {type(exc).__name__}: {exc}", meta) from exc
        raise Rejected("corrupt", f"SVG does not render: {type(exc).__name__}: {exc}", meta) from exc
    if fetcher.refused is not None:
        fetcher.refused.meta = meta
        raise fetcher.refused
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(png), formats=("PNG",))
            meta.width, meta.height = im.size
            if im.width * im.height > cfg.max_pixels:
                raise Rejected("decompression_bomb", f"renders to {im.width}x{im.height}", meta)
            meta.frames = [(0, np.asarray(im.convert("RGBA")))]
        except Exception as exc:
            raise rejection(exc, meta) from exc
    return meta


def is_svg(item: InputItem, data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return item.path.lower().endswith((".svg", ".svgz")) or head.startswith(b"<svg") or (
        head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()
    )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs in messages: differ on every run
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s/'\"]+){2,}")


def clean_detail(text: str, item: InputItem) -> str:
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
