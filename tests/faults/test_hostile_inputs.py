"""Fault injection, hostile inputs: truncated and corrupt files of every accepted format,
decompression and zip bombs, a GIF of 3,000 frames, SVGs with entities, external references
and nested data URLs, links out of the source and to FIFOs, zip entries with ``..`` and
absolute names, unicode, newline and undecodable file names.

Expected: the run finishes (no crash, no hang), every file has its manifest row with the
expected reason, no file outside the source is opened by the decode workers (an audit hook
records every ``open`` event in them), and the sources are unchanged. The figure it prints
(``-s``) is the one in docs/benchmarks.md, "Hostile inputs".
"""

from __future__ import annotations

import ast
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from stylegan.config import DataConfig
from stylegan.data import prepare as prep
from tests.faults import hooks
from tests.faults.hostile import SECRET, build_folder, build_zip
from tests.helpers import alarm

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    with alarm(120, "prepare blocked for 120 s on hostile input"):
        yield


def _tree_state(root: Path) -> dict[str, str]:
    """Every entry under root by lstat: content hash, link target or file type. Opens no FIFO."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            key = os.fsencode(p.relative_to(root)).hex()
            if stat.S_ISREG(st.st_mode):
                state[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                state[key] = "link:" + os.readlink(p)
            else:
                state[key] = stat.filemode(st.st_mode)
    return state


def _opened(log_dir: Path) -> list[str]:
    paths = []
    for log in log_dir.glob("*.log"):
        paths += [ast.literal_eval(line) for line in log.read_text().splitlines()]
    return paths


def _check_opens(paths: list[str], allowed: list[Path], tmp: Path) -> None:
    assert paths, "the audit hook recorded nothing"
    assert any(Path(p).is_absolute() and any(Path(p).is_relative_to(a) for a in allowed) for p in paths)
    for p in paths:
        assert SECRET not in p, f"a decode worker opened {p!r}, outside the source"
        if not os.path.isabs(p):  # one component below an already opened folder of the source
            assert "/" not in p and p not in (".", ".."), p
        elif Path(p).is_relative_to(tmp):
            assert any(Path(p).is_relative_to(a) for a in allowed), f"a decode worker opened {p!r}"


def _check_rows(m: pd.DataFrame, expect: dict[str, str | set[str]]) -> None:
    for name, reason in expect.items():
        rows = m[m["source"] == name]
        assert len(rows) >= 1, f"no manifest row for {name!r}"
        allowed = reason if isinstance(reason, set) else {reason}
        got = set(rows["reason"]) - {"duplicate"}
        assert got and got <= allowed, (name, rows[["status", "reason", "detail"]].to_dict("records"))
        assert all(rows.loc[rows["status"] == "rejected", "reason"] != ""), name  # a reason on every rejection


def test_hostile_files_are_all_accounted_for_and_nothing_outside_is_opened(tmp_path: Path) -> None:
    base = DataConfig(max_resolution=8, min_size=16, max_pixels=100_000, workers=2, decode_timeout=30.0)
    cap = prep.max_file_bytes(base)
    src, expect = build_folder(tmp_path, prep.SVG_MAX_BYTES, cap)
    zpath, zexpect = build_zip(tmp_path, cap)
    before = _tree_state(tmp_path)
    figures = []
    for source, wanted in ((src, expect), (zpath, zexpect)):
        log_dir = tmp_path / f"audit-{source.name}"
        log_dir.mkdir()
        out = tmp_path / f"out-{source.name}"
        cfg = DataConfig(**{**base.__dict__, "source": str(source), "out_dir": str(out)})
        start = time.perf_counter()
        summary = prep.prepare(cfg, log=lambda _: None, worker_init=partial(hooks.audit_opens, str(log_dir)))
        seconds = time.perf_counter() - start
        m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
        _check_rows(m, wanted)
        assert set(m["source"]) == set(wanted)  # nothing missing, nothing invented
        _check_opens(_opened(log_dir), [src] if source == src else [zpath], tmp_path)
        figures.append(f"{source.name}: {len(wanted)} files -> {summary['status'].get('rejected', 0)} rejected "
                       f"with reasons {dict(sorted(summary['reasons'].items()))}, {summary['images']} images kept, "
                       f"prepare {seconds:.1f} s")
    after = _tree_state(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # sources (and the secrets) unchanged
    print("\nhostile inputs: " + "; ".join(figures))
