"""Hostile inputs, built at run time (no binary is committed): ``build_folder`` and ``build_zip``
return the source and, for every file in it, the manifest reason it must get ("" = a usable
image; a set = any of these)."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SECRET = "OUTSIDE-secret"  # in every name outside the source: no open of it may be recorded
ACCEPTED = {"PNG": "png", "GIF": "gif", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif",
            "PPM": "ppm", "MPO": "mpo"}  # fmt: skip


def good_image(seed: int, fmt: str = "PNG", side: int = 40, **kw: object) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.full((side, side, 3), 255, np.uint8)
    a[6:-6, 6:-6] = rng.integers(0, 200, (side - 12, side - 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (1-bit grey): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_with_frames(n: int, side: int = 32) -> bytes:
    """A GIF of n frames, built from one encoded frame repeated (Pillow merges equal frames)."""
    im = Image.new("P", (side, side), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    buf = io.BytesIO()
    im.save(buf, "GIF", optimize=False)
    d = buf.getvalue()
    head_end = 13 + 768  # header, screen descriptor, global palette
    frame = d[d.index(b",", head_end - 1) : -1]
    return d[:head_end] + frame * n + b";"


def gif_claiming_screen(side: int) -> bytes:
    d = bytearray(gif_with_frames(1))
    d[6:10] = struct.pack("<HH", side, side)  # the logical screen
    d[13 + 768 + 5 : 13 + 768 + 9] = struct.pack("<HH", side, side)  # the frame
    return bytes(d)


def _svg(body: str, head: str = "", size: int = 40) -> bytes:
    return (f'{head}<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}">{body}</svg>').encode()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def hostile_svgs(secret: Path, svg_max_bytes: int) -> dict[str, tuple[bytes, str | set[str]]]:
    pad = " " * (svg_max_bytes + 1)
    inner = _svg(f'<rect x="5" y="5" width="30" height="30" fill="#1414dc"/><!--{pad}-->')
    laughs = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    big = io.BytesIO()
    Image.new("RGB", (2000, 2000), (200, 0, 0)).save(big, "PNG")  # 4 Mpx, tiny as a PNG
    return {
        "svg/entities.svg": (_svg("<text>&l9;</text>", f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY l0 "ha">'
                                  f"{laughs}]>"), "unsafe_svg"),
        "svg/xxe.svg": (_svg("<text>&x;</text>", f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM '
                             f'"file://{secret}">]>'), "unsafe_svg"),
        "svg/external.svg": (_svg(
            f'<style>@import url("file://{secret}");</style>'
            f'<image width="40" height="40" xlink:href="file://{secret}"/>'
            f'<image width="40" height="40" xlink:href="../../{secret.name}"/>'
            '<image width="40" height="40" xlink:href="http://127.0.0.1:9/x.png"/>'
        ), "empty"),  # nothing fetched, so nothing drawn
        "svg/nested_gzip_bomb.svg": (_svg(
            f'<image width="40" height="40" xlink:href="{_data_url("image/svg+xml", gzip.compress(inner))}"/>'
        ), "decompression_bomb"),
        "svg/embedded_raster_bomb.svg": (_svg(
            f'<image width="40" height="40" xlink:href="{_data_url("image/png", big.getvalue())}"/>'
        ), "decompression_bomb"),
        "svg/tall_canvas.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 100000">'
                                b'<rect width="1" height="100000"/></svg>', "decompression_bomb"),
        "svg/svgz_bomb.svgz": (gzip.compress(inner), "decompression_bomb"),
        "svg/use_loop.svg": (_svg('<g id="a"><use xlink:href="#a"/></g><rect width="9" height="9"/>'),
                             {"corrupt", "ok", ""}),  # must not crash the run; cairosvg may draw it
    }


def build_folder(tmp: Path, svg_max_bytes: int, cap: int) -> tuple[Path, dict[str, str | set[str]]]:
    """``tmp/src`` full of hostile files, plus files named SECRET outside it that links aim at."""
    src = tmp / "src"
    (src / "svg").mkdir(parents=True)
    (src / "sub").mkdir()
    secret = tmp / f"{SECRET}.png"
    secret.write_bytes(good_image(99))
    (tmp / f"{SECRET}-dir").mkdir()
    expect: dict[str, str | set[str]] = {}

    def put(name: str, data: bytes, reason: str | set[str]) -> None:
        (src / name).write_bytes(data)
        expect[name] = reason

    rng = np.random.default_rng(0)
    for i, (fmt, ext) in enumerate(ACCEPTED.items()):
        kw = {"save_all": True, "append_images": [Image.new("RGB", (40, 40))]} if fmt == "MPO" else {}
        data = good_image(i, fmt, **kw)
        put(f"ok_{i}.{ext}", data, "")
        # half an MPO is still its whole first image; a PPM's pixels may be any bytes at all
        put(f"truncated.{ext}", data[: len(data) // 2], {"corrupt", ""} if fmt == "MPO" else "corrupt")
        put(f"header_only.{ext}", data[:24], {"corrupt", "not_an_image"})
        garbage = bytes(rng.integers(0, 256, len(data) - 16, dtype=np.uint8))
        put(f"corrupt.{ext}", data[:16] + garbage, {"corrupt", ""} if fmt == "PPM" else "corrupt")
    put("bomb_header.png", png_claiming(100_000, 100_000), "decompression_bomb")
    put("bomb_screen.gif", gif_claiming_screen(60_000), "decompression_bomb")
    put("many_frames.gif", gif_with_frames(3000), "decompression_bomb")  # 3,000 x 32x32 > 25 x max_pixels
    with open(src / "huge_sparse.png", "wb") as f:
        f.truncate(cap + 1)
    expect["huge_sparse.png"] = "decompression_bomb"
    eps = io.BytesIO()
    Image.new("RGB", (30, 30)).save(eps, "EPS")
    put("postscript.png", eps.getvalue(), "unsupported_format")
    put("empty.png", b"", "not_an_image")
    put("text.png", b"just text", "not_an_image")
    renders = importlib.util.find_spec("cairosvg") is not None  # else every SVG is svg_unsupported
    for name, (data, reason) in hostile_svgs(secret, svg_max_bytes).items():
        put(name, data, reason if renders else "svg_unsupported")
    # links and special files
    os.symlink(secret, src / "link_out.png")
    expect["link_out.png"] = "symlink_outside_source"
    os.symlink(f"../../{secret.name}", src / "sub" / "link_up.png")
    expect["sub/link_up.png"] = "symlink_outside_source"
    os.symlink(tmp / f"{SECRET}-dir", src / "link_out_dir")
    expect["link_out_dir"] = "symlink_outside_source"
    os.mkfifo(src / "fifo")
    expect["fifo"] = "not_a_file"
    os.symlink(src / "fifo", src / "link_fifo.png")
    expect["link_fifo.png"] = "not_a_file"
    os.symlink(src / "svg", src / "link_dir")
    expect["link_dir"] = "not_a_file"
    os.symlink(tmp / "gone.png", src / "dangling.png")
    expect["dangling.png"] = "broken_symlink"
    os.symlink(src / "loop_b.png", src / "loop_a.png")
    os.symlink(src / "loop_a.png", src / "loop_b.png")
    expect["loop_a.png"] = expect["loop_b.png"] = "broken_symlink"
    # awkward names of good images
    for i, name in enumerate(["ピカチュウ-25.png", "new\nline.png", 'comma,"quote".png', "tab\tname.png"]):
        put(name, good_image(100 + i), "")
    bad = os.fsencode(src) + b"/bad\xff-name.png"
    with open(bad, "wb") as f:
        f.write(good_image(200))
    expect["bad\\xff-name.png"] = ""  # the manifest shows the undecodable byte escaped
    return src, expect


def build_zip(tmp: Path, cap: int) -> tuple[Path, dict[str, str | set[str]]]:
    path = tmp / "hostile.zip"
    expect: dict[str, str | set[str]] = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:

        def put(name: str, data: bytes, reason: str | set[str]) -> None:
            zf.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
            expect.setdefault(name, reason)

        put("ok.png", good_image(1), "")
        put("ピカ.png", good_image(2), "")
        put("../escape.png", good_image(3), "unsafe_path")
        put("/absolute.png", good_image(4), "unsafe_path")
        put("a/../../up.png", good_image(5), "unsafe_path")
        put("C:/drive.png", good_image(6), "unsafe_path")
        put("bomb.png", b"\0" * (cap + 1), "decompression_bomb")
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z2:
            z2.writestr("x.png", b"\0" * (cap + 1))
        put("nested.zip", inner.getvalue(), "not_an_image")  # never opened as an archive
        put("truncated.png", good_image(7)[:100], "corrupt")
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, str(tmp / f"{SECRET}.png"))
        expect["link.png"] = "not_a_file"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": that is the point
            zf.writestr("dup.png", good_image(8))
            zf.writestr("dup.png", good_image(9))
        expect["dup.png"] = {"", "duplicate_name"}  # two rows: the first used, the second refused
    return path, expect
