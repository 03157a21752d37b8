"""A full disk while writing a checkpoint and the prepared arrays: a clear error, the previous files intact.

The disk is "full" through ``_faultlib.full_disk``: files opened for writing under a folder take a
few bytes and then raise ENOSPC (what write() returns on a full filesystem), whichever module
writes them. Each test prints one ``FIGURE`` line (docs/benchmarks.md, "Fault injection").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.faults import _faultlib as fl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fl.tiny_project(tmp_path_factory.mktemp("faults-project"))


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_during_checkpoint_write(project: dict[str, Any], tmp_path: Path) -> None:
    from stylegan.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    argv = fl.train_argv(project["params"], project["data"], run_dir, tmp_path / "export")[:-2]
    assert fl.run_child(fl.train_child, [*argv, "--max-steps", "2"], [], None) == 0
    before = _tree(run_dir / "checkpoints")
    log = tmp_path / "stderr.txt"
    code = fl.run_child(fl.disk_child, [*argv, "--max-steps", "2"], str(run_dir / "checkpoints"), 4096, stderr=log)
    err = log.read_text().strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("pokegan train: error: [Errno 28] No space left on device: ")
    assert "/checkpoints/ckpt-" in err[-1], err[-1]  # names the file it could not write
    assert _tree(run_dir / "checkpoints") == before  # nothing replaced, no temp file left behind
    newest = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]
    assert load_checkpoint(newest)["cur_nimg"] > 0
    # Space again: the same command resumes from the intact checkpoint.
    assert fl.run_child(fl.train_child, [*argv, "--max-steps", "1"], [], None) == 0
    print(f"\nFIGURE disk-checkpoint: ENOSPC while writing a checkpoint -> exit 2, one line ({err[-1][:60]}...), "
          f"{len(before)} earlier checkpoint files byte-identical, no temp file, the next run resumed")


def test_full_disk_during_prepare(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import yaml

    from stylegan.cli import main
    from tests.flows_helpers import sprite_folder

    src = sprite_folder(tmp_path / "src", n=6)
    out = tmp_path / "data" / "prepared"
    data = {"source": str(src), "out_dir": str(out), "max_resolution": 8, "min_size": 8, "workers": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    argv = ["prepare", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]
    assert main(argv) == 0
    before = _tree(out)
    sprite_folder(src, n=9, seed=1)  # more and other images: the next prepare writes more bytes
    capfd.readouterr()
    with fl.full_disk(tmp_path / "data", budget=256) as hits:
        code = main(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert hits and code == 2 and err[-1].startswith("pokegan prepare: error: [Errno 28] No space left on device")
    assert _tree(out) == before and fl.siblings(out) == []  # the previous output intact, the temp folder gone
    assert json.loads((out / "summary.json").read_text())["images"] == 6
    print(f"\nFIGURE disk-prepare: ENOSPC while writing the prepared arrays -> exit 2, one line; the previous "
          f"output ({len(before)} files) byte-identical, no temp folder left")
