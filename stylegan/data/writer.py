"""Writing: manifest rows and images (in input order) -> deduped packed arrays, manifest.csv and
summary.json in a temp folder swapped in at the end (the previous output survives a failure)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stylegan.config import DataConfig, to_dict
from stylegan.data.sources import package_name, uses_package
from stylegan.data.transforms import resolutions
from stylegan.io import pid_alive

MANIFEST_COLUMNS = [
    "source", "frame", "n_frames", "species_id", "form", "variant", "width", "height", "mode",
    "format", "content_hash", "status", "reason", "detail", "index",
]  # fmt: skip
_NPY_HEADER = 128  # fixed .npy header size, so arrays can be streamed before N is known
# Settings that do not change a single output byte of the images: kept out of summary.json, so
# that changing them (or cloning the repo elsewhere) leaves data/prepared, its DVC hash, as it was.
_RUN_ONLY_PARAMS = ("out_dir", "raw_dir", "workers", "decode_timeout")


@dataclass
class FrameResult:
    """One manifest row and, when usable, the image at every resolution (uint8 CHW, 4 first)."""

    row: dict[str, Any]
    images: list[np.ndarray] | None = None


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
            if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
                continue
            if kind == "old" and not out_dir.exists() and (folder / "summary.json").is_file():
                os.replace(folder, out_dir)
            else:
                shutil.rmtree(folder, ignore_errors=True)


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

