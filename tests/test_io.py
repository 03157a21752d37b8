"""stylegan/io.py: atomic files (fsynced, file and folder) and marked output folders swapped, never deleted first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stylegan.io import OUTPUT_MARKER, OutputDirError, atomic_write_json, check_replaceable, recover_dir, replace_dir


def test_atomic_write_keeps_the_old_file_on_a_failed_write(tmp_path: Path) -> None:
    from stylegan.io import atomic_write

    atomic_write_json(tmp_path / "x.json", {"v": 1})

    def boom(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"No space left on device: '.*x\.json'"):
        atomic_write(tmp_path / "x.json", boom)
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def _fill(n: int):
    def fill(tmp: Path) -> int:
        for i in range(n):
            (tmp / f"{i}.txt").write_text(str(i))
        return n

    return fill


def test_replace_dir_swaps_marked_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert replace_dir(out, _fill(3)) == 3
    assert (out / OUTPUT_MARKER).is_file() and sorted(p.name for p in out.glob("*.txt")) == ["0.txt", "1.txt", "2.txt"]
    assert replace_dir(out, _fill(1)) == 1  # our own folder: replaced whole
    assert sorted(p.name for p in out.glob("*.txt")) == ["0.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old copy left
    (tmp_path / "empty").mkdir()
    replace_dir(tmp_path / "empty", _fill(1))  # an empty folder holds nothing to lose


def test_replace_dir_refuses_foreign_folders_and_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "keep.txt").write_text("precious")
    home = tmp_path / "home"
    (home / "notes.txt").parent.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    ran = []
    for target, match in [(data, "did not create"), (Path("."), "root, home or working"),
                          (Path("~"), "root, home or working"), (tmp_path / "file.txt", "is a file"),
                          (Path("/"), "root, home or working")]:
        with pytest.raises(OutputDirError, match=match):
            replace_dir(target, lambda tmp: ran.append(tmp))
    assert ran == []  # refused before any work
    assert (data / "raw" / "keep.txt").read_text() == "precious" and (home / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*"))


def test_replace_dir_recovers_after_a_kill_between_the_renames(tmp_path: Path) -> None:
    out = tmp_path / "out"
    replace_dir(out, _fill(2))
    dead = 2**22 + 7  # above pid_max's default: no process has it
    old = tmp_path / f".out.old-{dead}-abc"
    os.replace(out, old)  # what a kill between the renames leaves: the old copy, no out
    (tmp_path / f".out.tmp-{dead}-def").mkdir()  # and the new one half written
    assert sorted(p.name for p in recover_dir(out)) == [old.name, f".out.tmp-{dead}-def"]
    assert sorted(p.name for p in out.glob("*.txt")) == ["0.txt", "1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    check_replaceable(out)


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    replace_dir(out, _fill(2))
    real = os.replace

    def failing(src: object, dst: object) -> None:
        if Path(str(dst)) == out and ".tmp-" in str(src):  # the new folder's rename; the restore works
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        replace_dir(out, _fill(5))
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in out.glob("*.txt")) == ["0.txt", "1.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
