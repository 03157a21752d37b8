"""Preparation: every kind of good and bad input, dedupe, crop/pad, determinism, atomic output."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from stylegan.config import DataConfig
from stylegan.data import decode
from stylegan.data import prepare as prep
from stylegan.data.decode import decode_raster
from stylegan.data.prepare import prepare, prepare_item
from stylegan.data.sources import InputItem, list_inputs, parse_name
from stylegan.data.transforms import pyramid, square

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (0, 255, 0)


def _rgba_sprite(w: int = 40, h: int = 40, box: tuple[int, int, int, int] = (7, 5, 10, 20)) -> Image.Image:
    """Transparent canvas with an opaque red rectangle (x, y, w, h); transparent pixels hold green."""
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = GREEN  # invisible colour: must never leak into the output
    x, y, bw, bh = box
    a[y : y + bh, x : x + bw] = (*RED, 255)
    return Image.fromarray(a, "RGBA")


def _palette_frame(color: tuple[int, int, int], x: int) -> Image.Image:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([*GREEN, *color] + [0, 0, 0] * 254)
    im.paste(1, (x, 8, x + 12, 24))
    im.info["transparency"] = 0
    return im


def _gif_bytes(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], transparency=0, disposal=2, duration=50)
    return buf.getvalue()


def _png(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A folder with one file of every good and bad kind the preparation must handle."""
    return _build_source(tmp_path)


def _build_source(tmp_path: Path) -> Path:
    """``tmp_path/src`` (returned) with every kind of input, and ``tmp_path/outside.png``."""
    src = tmp_path / "src"
    (src / "back" / "shiny").mkdir(parents=True)
    _rgba_sprite().save(src / "25.png")
    _rgba_sprite().save(src / "copy_of_25.png")  # exact duplicate after preparation
    (src / "back" / "shiny" / "6-mega.gif").write_bytes(
        _gif_bytes([_palette_frame(RED, 4), _palette_frame(BLUE, 10), _palette_frame(RED, 4), _palette_frame(BLUE, 16)])
    )
    Image.new("L", (30, 30), 255).save(src / "gray.png")  # all white: no content -> rejected "empty"
    g = Image.new("L", (30, 30), 255)
    g.paste(60, (5, 5, 20, 25))
    g.save(src / "gray_content.bmp")
    la = Image.new("LA", (30, 30), (0, 0))
    la.paste((90, 255), (10, 10, 20, 20))
    la.save(src / "la.png")
    cmyk = Image.new("CMYK", (30, 30), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (5, 5, 25, 25))  # red in CMYK
    cmyk.save(src / "cmyk.jpg", quality=95)
    i16 = np.full((30, 30), 65535, np.uint16)
    i16[5:25, 5:25] = 32768  # mid grey in 16 bits
    Image.fromarray(i16).save(src / "deep.png")
    webp = Image.new("RGB", (30, 30), (255, 255, 255))
    webp.paste(BLUE, (3, 3, 20, 27))
    webp.save(src / "w.webp", lossless=True)
    exif_im = Image.new("RGB", (40, 20), (255, 255, 255))
    exif_im.paste(RED, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    exif_im.save(src / "exif.jpg", exif=exif, quality=95)
    good = _png(_rgba_sprite())
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "corrupt.png").write_bytes(good[:40] + bytes(range(256)) * 4)
    (src / "notes.txt").write_text("not an image")
    _rgba_sprite(8, 8, (1, 1, 4, 4)).save(src / "tiny.png")
    Image.new("RGB", (400, 300), (0, 0, 0)).save(src / "bomb.png")  # above the test's pixel cap
    outside = tmp_path / "outside.png"
    _rgba_sprite().save(outside)
    os.symlink(outside, src / "link_out.png")
    os.symlink(src / "25.png", src / "link_in.png")  # inside the source: allowed
    os.symlink(tmp_path / "gone.png", src / "dangling.png")
    return src


def _cfg(src: Path | str, out: Path, **kw: object) -> DataConfig:
    base = dict(source=str(src), out_dir=str(out), max_resolution=16, min_size=16, max_pixels=100_000, workers=1)
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_manifest_accounts_for_every_input(source: Path, tmp_path: Path) -> None:
    before = _tree_digest(source)
    out = tmp_path / "prepared"
    summary = prepare(_cfg(source, out), log=lambda _: None)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    by = {src: grp for src, grp in m.groupby("source")}
    files = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() or p.is_symlink()}
    assert set(by) == files  # every input has a row

    def reason(name: str) -> str:
        assert len(by[name]) == 1, by[name]
        return by[name]["reason"].iloc[0]

    assert reason("truncated.png") == "corrupt"
    assert reason("corrupt.png") == "corrupt"
    assert reason("notes.txt") == "not_an_image"
    assert reason("tiny.png") == "too_small"
    assert reason("bomb.png") == "decompression_bomb"
    assert reason("link_out.png") == "symlink_outside_source"
    assert reason("dangling.png") == "broken_symlink"
    assert reason("gray.png") == "empty"
    assert reason("copy_of_25.png") == "duplicate"  # "25.png" sorts first and is kept
    assert reason("link_in.png") == "duplicate"
    for ok in ("25.png", "gray_content.bmp", "la.png", "cmyk.jpg", "deep.png", "w.webp", "exif.jpg"):
        assert by[ok]["status"].tolist() == ["ok"], (ok, by[ok])

    gif = by["back/shiny/6-mega.gif"]  # one row per frame; frame 2 repeats frame 0, and frame 3
    assert gif["frame"].tolist() == [0, 1, 2, 3]  # is frame 1 moved sideways: the same after cropping
    assert gif["status"].tolist() == ["ok", "ok", "duplicate", "duplicate"]
    assert set(gif["variant"]) == {"back-shiny"} and set(gif["form"]) == {"mega"}
    assert set(gif["species_id"].astype(int)) == {6}

    ok = m[m["status"] == "ok"]
    assert ok["index"].tolist() == list(range(len(ok)))  # manifest order == array order
    for r in (4, 8, 16):
        arr = np.load(out / f"images_{r}.npy")
        assert arr.shape == (len(ok), 3, r, r) and arr.dtype == np.uint8
    assert summary["status"] == {"duplicate": 4, "ok": len(ok), "rejected": 8}
    assert json.loads((out / "summary.json").read_text())["reasons"] == summary["reasons"]
    assert _tree_digest(source) == before  # sources untouched
    assert not list(tmp_path.glob(".prepared*"))  # no temp folder left behind


def test_outputs_are_byte_identical_for_any_worker_count(source: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(_cfg(source, a, workers=1), log=lambda _: None)
    prepare(_cfg(source, b, workers=2), log=lambda _: None)  # different chunking, processes and out_dir
    assert _tree_digest(a) == _tree_digest(b)  # summary.json included: DVC's hash of the folder is the same
    params = json.loads((a / "summary.json").read_text())["params"]
    assert "workers" not in params and "out_dir" not in params and params["max_resolution"] == 16


def test_outputs_do_not_depend_on_where_the_source_lives(tmp_path: Path) -> None:
    # The same project cloned at two places: relative source and out_dir under each root.
    roots = [tmp_path / "clone", tmp_path / "elsewhere" / "deeper" / "clone"]
    for root in roots:
        _build_source(root)
        prepare(_cfg("src", Path("prepared")), root=root, log=lambda _: None)
    one, two = (_tree_digest(root / "prepared") for root in roots)
    assert one == two
    manifest = (roots[0] / "prepared" / "manifest.csv").read_text()
    assert str(tmp_path) not in manifest and "outside.png" not in manifest  # no absolute link targets


def test_zip_source_matches_folder(source: Path, tmp_path: Path) -> None:
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in ("25.png", "copy_of_25.png", "back/shiny/6-mega.gif", "notes.txt", "la.png"):
            zf.write(source / name, name)
    out = tmp_path / "z"
    summary = prepare(_cfg(zpath, out), log=lambda _: None)
    assert summary["status"] == {"duplicate": 3, "ok": 4, "rejected": 1}
    assert np.load(out / "images_16.npy").shape[0] == 4


def test_crop_and_pad_place_content_in_the_centre() -> None:
    cfg = DataConfig(margin=0.1, max_resolution=16)
    sq = square(np.asarray(_rgba_sprite(box=(7, 5, 10, 20))), cfg)
    # content 10x20 -> side 20, pad round(0.1*20)=2 -> 24x24; content at y=2..21, x=7..16
    assert sq.shape == (24, 24, 3)
    red = (sq == RED).all(axis=2)
    ys, xs = np.nonzero(red)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 21, 7, 16)
    assert red.sum() == 200 and ((sq == 255).all(axis=2) | red).all()  # rest is background, no green


def test_pyramid_levels_are_exact_area_means() -> None:
    rng = np.random.default_rng(0)
    sq = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    levels = pyramid(sq, DataConfig(max_resolution=32))
    assert [lv.shape for lv in levels] == [(3, r, r) for r in (4, 8, 16, 32)]
    for lo, hi in itertools.pairwise(levels):
        x = hi.astype(np.int32)
        mean = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2] + 2) // 4
        assert np.array_equal(lo, mean)


def _first_frame(data: bytes, cfg: DataConfig) -> np.ndarray:
    """The first decoded frame (frames are decoded lazily, one at a time)."""
    return next(iter(decode_raster(data, InputItem("x"), cfg).frames))[1]


def test_modes_are_converted_not_clipped(source: Path) -> None:
    cfg = DataConfig(min_size=16)
    deep = _first_frame((source / "deep.png").read_bytes(), cfg)
    assert deep.shape[2] == 3 and deep[15, 15, 0] == 128 and deep[0, 0, 0] == 255  # 16-bit scaled to 8
    cmyk = _first_frame((source / "cmyk.jpg").read_bytes(), cfg)
    assert cmyk[15, 15, 0] > 200 and cmyk[15, 15, 1] < 40  # red stays red
    exif = _first_frame((source / "exif.jpg").read_bytes(), cfg)
    assert exif.shape[:2] == (40, 20)  # rotated upright: stored 40 wide, shown 20 wide
    assert exif[2, 10, 0] > 200 and exif[2, 10, 1] < 60  # the red band lands on top after rotation
    la = _first_frame((source / "la.png").read_bytes(), cfg)
    assert la.shape[2] == 4 and la[0, 0, 3] == 0 and la[15, 15, 3] == 255


def test_package_animations_keep_evenly_spaced_distinct_frames() -> None:
    frames = [_palette_frame(RED, x) for x in (2, 6, 2, 10, 14, 18)]  # 5 distinct, frame 2 repeats 0
    item = InputItem("versions/animated/back/150.gif", *parse_name("back/150.gif", True), data=_gif_bytes(frames),
                     animation=True)  # fmt: skip
    rows = [r.row for r in prepare_item(item, DataConfig(frames_per_sprite=3, max_resolution=8))]
    assert [r["frame"] for r in rows] == [0, 3, 5]  # distinct frames 0,1,3,4,5 -> indices 0, 2, 4
    assert {r["variant"] for r in rows} == {"back"} and {r["species_id"] for r in rows} == {150}
    allrows = [r.row for r in prepare_item(item, DataConfig(frames_per_sprite=0, max_resolution=8))]
    assert [r["frame"] for r in allrows] == [0, 1, 3, 4, 5]


def test_failed_run_keeps_previous_output(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(_cfg(source, out), log=lambda _: None)
    good = _tree_digest(out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("x")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="nothing usable"):
        prepare(_cfg(bad, out), log=lambda _: None)
    assert _tree_digest(out) == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(_cfg(tmp_path / "missing", out))


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(source: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "prepared"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".prepared.tmp-{int(dead.stdout)}"  # what a SIGKILLed prepare leaves behind
    stale.mkdir()
    (stale / "images_64.npy").write_bytes(b"x" * 1000)
    live = tmp_path / f".prepared.tmp-{os.getppid()}"  # a prepare still running elsewhere: not ours to delete
    live.mkdir()
    prepare(_cfg(source, out), log=lambda _: None)
    assert not stale.exists() and live.is_dir() and (out / "manifest.csv").is_file()


def test_svg_renders_without_fetching_what_it_points_to(tmp_path: Path) -> None:
    pytest.importorskip("cairosvg")
    src = tmp_path / "svg"
    src.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), RED).save(secret)
    (src / "1.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
        '<circle cx="20" cy="20" r="10" fill="#1414dc"/></svg>'
    )
    (src / "2.svg").write_text(  # only an external image: must render blank (so rejected as empty)
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="40" height="40">'
        f'<image x="0" y="0" width="40" height="40" xlink:href="file://{secret}"/></svg>'
    )
    out = tmp_path / "o"
    prepare(_cfg(src, out, max_resolution=8), log=lambda _: None)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("source")
    assert m.loc["1.svg", "status"] == "ok" and m.loc["1.svg", "width"] == 32  # rendered at 4 * max_resolution
    assert m.loc["2.svg", "reason"] == "empty"
    img = np.load(out / "images_8.npy")[0]
    assert img[2, 4, 4] > 150 and img[0, 4, 4] < 80  # blue circle in the middle


def test_cli_prepare_reads_the_data_section(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stylegan.cli import main

    params = tmp_path / "params.yaml"
    out = tmp_path / "cli_out"
    params.write_text(f"data:\n  source: {source}\n  out_dir: {out}\n  max_resolution: 8\n  max_pixels: 100000\n")
    assert main(["prepare", "--params", str(params), "--set", "min_size=16", "--workers", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["params"]["max_resolution"] == 8
    assert sorted(p.name for p in out.glob("images_*.npy")) == ["images_4.npy", "images_8.npy"]
    assert main(["prepare", "--params", str(params), "--set", f"source={tmp_path / 'nowhere'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fetch", "--params", str(params)]) == 0  # a folder source: nothing to fetch


# ---------------------------------------------------------------- hostile and unusual inputs


@pytest.mark.parametrize(
    ("target", "error"),
    [("exif_transpose", KeyError("Orientation")), ("open", struct.error("unpack requires a buffer of 4 bytes"))],
)
def test_an_unexpected_exception_rejects_only_that_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, error: Exception
) -> None:
    # Pillow plugins and their EXIF parsers raise whatever they like on a hostile file.
    real_transpose, real_open = ImageOps.exif_transpose, Image.open

    def transpose(im: Image.Image, **kw: object) -> Image.Image:
        if im.size == (40, 20):  # exif.jpg only
            raise error
        return real_transpose(im, **kw)

    def open_(fp: object, *args: object, **kw: object) -> Image.Image:
        if isinstance(fp, io.BytesIO) and fp.getvalue() == (source / "exif.jpg").read_bytes():
            raise error
        return real_open(fp, *args, **kw)

    if target == "exif_transpose":
        monkeypatch.setattr(prep.ImageOps, "exif_transpose", transpose)
    else:
        monkeypatch.setattr(prep.Image, "open", open_)
    # In this process (the patches do not reach prepare()'s worker processes): prepare_chunk
    # is what every worker runs.
    cfg = _cfg(source, tmp_path / "prepared")
    m = pd.DataFrame([r.row for r in prep.prepare_chunk(list_inputs(cfg), cfg)]).drop_duplicates("source")
    m = m.set_index("source")
    assert m.loc["exif.jpg", "status"] == "rejected" and m.loc["exif.jpg", "reason"] == "corrupt"
    assert type(error).__name__ in m.loc["exif.jpg", "detail"] or str(error) in m.loc["exif.jpg", "detail"]
    if target == "exif_transpose":  # opened first: its size and mode are known
        assert (m.loc["exif.jpg", "width"], m.loc["exif.jpg", "height"], m.loc["exif.jpg", "mode"]) == (40, 20, "RGB")
    for ok in ("25.png", "cmyk.jpg", "deep.png", "w.webp", "la.png"):
        assert m.loc[ok, "status"] == "ok", ok


def test_interrupts_are_never_swallowed(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.Image, "open", stop)
    with pytest.raises(KeyboardInterrupt):
        prepare_item(InputItem("25.png", file=str(source / "25.png")), DataConfig())


def test_rejected_rows_keep_the_known_size_and_mode(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare(_cfg(source, out), log=lambda _: None)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False).set_index("source")
    # Pillow refuses the bomb in its header check (nothing decoded); its message names the size.
    assert m.loc["bomb.png", "reason"] == "decompression_bomb" and "120000 pixels" in m.loc["bomb.png", "detail"]
    assert tuple(m.loc["tiny.png", ["width", "height", "mode", "format"]]) == (8, 8, "RGBA", "PNG")
    assert tuple(m.loc["truncated.png", ["width", "height", "mode"]]) == (40, 40, "RGBA")  # failed after opening
    assert tuple(m.loc["notes.txt", ["width", "height", "mode"]]) == (0, 0, "")  # never opened


def _sprite_gif(n: int, side: int = 32) -> bytes:
    """n frames, all distinct after cropping (the box grows), on a transparent canvas."""
    frames = []
    for i in range(n):
        im = Image.new("P", (side, side), 0)
        im.putpalette([*GREEN, *RED] + [0, 0, 0] * 254)
        im.paste(1, (2, 2, 4 + i % (side - 4), side - 2 - i // (side - 4)))
        im.info["transparency"] = 0
        frames.append(im)
    return _gif_bytes(frames)


def test_animation_frames_are_bounded_in_total(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _sprite_gif(30)  # 30 frames of 32x32 = 30,720 pixels decoded in all
    small = DataConfig(max_pixels=1100, max_resolution=8)  # one frame fits; 25 x 1100 in all does not
    rows = [r.row for r in prepare_item(InputItem("a/1.gif", data=data, animation=True), small)]
    assert [(r["reason"], r["width"], r["n_frames"]) for r in rows] == [("decompression_bomb", 32, 30)]
    assert "30 frames of 32x32" in rows[0]["detail"]
    first = DataConfig(max_pixels=1100, max_resolution=8, gif_frames="first")  # a user GIF: one frame decoded
    assert [r.row["status"] for r in prepare_item(InputItem("u/1.gif", data=data), first)] == ["ok"]

    # Past what data.max_pixels holds, distinct frames are not kept but decoded again when
    # chosen: the rows and images are the same as when all of them fit.
    calls: list[int] = []
    real = decode.to_array
    monkeypatch.setattr(decode, "to_array", lambda im, *a: calls.append(1) or real(im, *a))
    data = _sprite_gif(20)
    item = InputItem("a/2.gif", data=data, animation=True)
    kept = prepare_item(item, DataConfig(max_pixels=1_000_000, max_resolution=8, frames_per_sprite=4))
    assert len(calls) == 20
    calls.clear()
    streamed = prepare_item(item, DataConfig(max_pixels=3000, max_resolution=8, frames_per_sprite=4))
    assert len(calls) == 20 + 4  # the hashing pass, then the 4 chosen frames again
    assert [r.row["frame"] for r in kept] == [r.row["frame"] for r in streamed] == [0, 6, 13, 19]
    for a, b in zip(kept, streamed, strict=True):
        assert a.row["content_hash"] == b.row["content_hash"]
        assert all(np.array_equal(x, y) for x, y in zip(a.images or [], b.images or [], strict=True))


def _growing_gif(n: int, header_side: int, frame_side: int) -> bytes:
    """A GIF whose header says header_side but whose later frames are frame_side: Pillow grows
    the canvas on seek, so the header alone understates what decoding costs."""

    def parts(side: int) -> tuple[bytes, bytes]:
        im = Image.new("P", (side, side), 1)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        buf = io.BytesIO()
        im.save(buf, "GIF", optimize=False)
        d = buf.getvalue()
        start = d.index(b",", 13 + 768 - 1)  # header + screen descriptor + global palette, then the image
        return d[: 13 + 768], d[start:-1]

    head, small = parts(header_side)
    big = parts(frame_side)[1]
    return head + small + big * (n - 1) + b";"


@pytest.mark.parametrize("animation", [True, False])
def test_a_canvas_that_grows_on_seek_counts_against_the_pixel_budget(animation: bool) -> None:
    data = _growing_gif(12, 16, 120)  # the header says 16x16 (256 px); the frames decode at 120x120
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (16, 16) and im.n_frames == 12
    cfg = DataConfig(max_pixels=20_000, max_resolution=8, frames_per_sprite=4)  # 120x120 = 14,400 px a frame
    item = InputItem("a/1.gif" if animation else "u/1.gif", data=data, animation=animation)
    rows = [r.row for r in prepare_item(item, cfg)]
    # 12 x 14,400 is under 25 x 20,000, so the header check passes; each frame fits too. With
    # a tighter budget the real canvas size is what decides:
    assert all(r["status"] != "rejected" for r in rows)
    tight = DataConfig(max_pixels=6_000, max_resolution=8, frames_per_sprite=4)  # 14,400 > 6,000 a frame
    rows = [r.row for r in prepare_item(item, tight)]
    assert [(r["reason"], r["width"]) for r in rows] == [("decompression_bomb", 16)]
    assert "is 120x120" in rows[0]["detail"]


def test_oversized_files_are_rejected_without_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, tmp_path / "o")  # max_pixels 100,000: cap 16 x 100,000 + 16 MiB = 18.4 MB
    cap = prep.max_file_bytes(cfg)
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * (cap + 1))  # ~18 KB compressed
        zf.write(_write(tmp_path / "25.png", _png(_rgba_sprite())), "25.png")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **kw: opened.append(str(getattr(
        name, "filename", name))) or real_open(self, name, *a, **kw))  # fmt: skip
    summary = prepare(_cfg(zpath, tmp_path / "z"), log=lambda _: None)
    m = pd.read_csv(tmp_path / "z" / "manifest.csv", keep_default_na=False).set_index("source")
    assert m.loc["big.png", "reason"] == "decompression_bomb" and "zip entry inflates" in m.loc["big.png", "detail"]
    assert m.loc["25.png", "status"] == "ok" and summary["images"] == 1
    zcfg = _cfg(zpath, tmp_path / "z")
    prep.prepare_chunk(list_inputs(zcfg), zcfg)  # in this process, where the patch applies
    assert "big.png" not in opened and "25.png" in opened

    folder = tmp_path / "folder"
    folder.mkdir()
    with open(folder / "huge.png", "wb") as f:
        f.truncate(cap + 1)  # sparse: nothing written
    rows = prepare_item(InputItem("huge.png", file=str(folder / "huge.png")), cfg)
    assert [r.row["reason"] for r in rows] == ["decompression_bomb"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_svgz_is_inflated_with_a_bound(tmp_path: Path) -> None:
    pytest.importorskip("cairosvg")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><rect x="10" y="10" width="20" height="20"/>'
    cfg = DataConfig(max_resolution=8)
    ok = prepare_item(InputItem("1.svgz", data=gzip.compress(svg + b"</svg>")), cfg)
    assert [r.row["status"] for r in ok] == ["ok"]
    bomb = gzip.compress(svg + b" " * (prep.SVG_MAX_BYTES + 1) + b"</svg>")  # ~16 KB on disk
    rows = [r.row for r in prepare_item(InputItem("2.svg", data=bomb), cfg)]
    assert [(r["reason"], r["detail"]) for r in rows] == [
        ("decompression_bomb", f"gzip'd SVG inflates past {prep.SVG_MAX_BYTES:,} bytes")
    ]


def test_mpo_is_one_upright_image_not_an_animation(tmp_path: Path) -> None:
    # A camera JPEG with an MP header: Pillow opens it with 2 frames (the second a preview).
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    im.paste(RED, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    im.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (40, 20), BLUE)], exif=exif, quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    cfg = DataConfig(min_size=16, max_resolution=8, gif_frames="all")
    meta = decode_raster(buf.getvalue(), InputItem("cam.jpg"), cfg)
    frames = list(meta.frames)
    assert meta.format == "MPO" and [i for i, _ in frames] == [0]
    assert frames[0][1].shape[:2] == (40, 20)  # EXIF applied: stored 40 wide, shown 20 wide
    assert frames[0][1][2, 10, 0] > 200 and frames[0][1][2, 10, 2] < 80  # the red band on top, no blue preview
    rows = [r.row for r in prepare_item(InputItem("cam.jpg", data=buf.getvalue()), cfg)]
    assert [(r["frame"], r["status"]) for r in rows] == [(0, "ok")]


def test_sixteen_bit_depth_comes_from_the_format_not_the_values() -> None:
    cfg = DataConfig(min_size=16)
    dark = np.full((30, 30), 200, np.uint16)  # 200 / 65535: nearly black
    pgm = b"P5\n30 30\n65535\n" + dark.astype(">u2").tobytes()  # Pillow opens 16-bit PGM as mode "I"
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    assert _first_frame(pgm, cfg).max() == 1
    png = _png(Image.fromarray(dark))  # mode I;16
    assert _first_frame(png, cfg).max() == 1
    tif = io.BytesIO()
    Image.fromarray(dark.astype(np.int32)).save(tif, "TIFF")  # 32-bit ints holding 8-bit values: kept as they are
    assert Image.open(io.BytesIO(tif.getvalue())).mode == "I" and _first_frame(tif.getvalue(), cfg).max() == 200


def test_details_hold_no_absolute_paths_or_addresses() -> None:
    item = InputItem("sub/a.png", file="/home/someone/src/sub/a.png")
    text = "[Errno 13] Permission denied: '/home/someone/src/sub/a.png' in <_io.BytesIO object at 0x7f3a2c1b9d00>"
    assert decode.clean_detail(text, item) == "[Errno 13] Permission denied: 'sub/a.png' in <_io.BytesIO object>"
    other = decode.clean_detail("cannot read /var/tmp/elsewhere/x.bin, 1/2 done", item)
    assert other == "cannot read x.bin, 1/2 done"


def test_stale_old_outputs_are_removed_or_restored(source: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    out = tmp_path / "prepared"
    prepare(_cfg(source, out), log=lambda _: None)
    good = _tree_digest(out)
    stale = tmp_path / f".prepared.old-{dead}"  # a run killed after the swap, before removing the old output
    stale.mkdir()
    (stale / "images_64.npy").write_bytes(b"x" * 1000)
    live = tmp_path / f".prepared.old-{os.getppid()}"  # a live run's: not ours to touch
    live.mkdir()
    prepare(_cfg(source, out), log=lambda _: None)
    assert not stale.exists() and live.is_dir() and _tree_digest(out) == good
    live.rmdir()

    # Killed between the two renames: no out_dir, the previous output in .old-<pid>. The next
    # run puts it back first, so a failing run still leaves it in place.
    os.replace(out, stale)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="nothing usable"):
        prepare(_cfg(bad, out), log=lambda _: None)
    assert _tree_digest(out) == good and not stale.exists()


def test_a_failed_swap_restores_the_previous_output(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "prepared"
    prepare(_cfg(source, out), log=lambda _: None)
    good = _tree_digest(out)
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(src)).name.startswith(".prepared.tmp-"):
            raise OSError("disk went away")
        real_replace(src, dst)

    monkeypatch.setattr(prep.os, "replace", replace)
    with pytest.raises(OSError, match="disk went away"):
        prepare(_cfg(source, out, margin=0.2), log=lambda _: None)
    assert _tree_digest(out) == good
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")]  # no temp, no old
