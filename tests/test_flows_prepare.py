"""The prepare flow: chunk tasks in parallel, output identical to the library's, a summary artifact."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

pytest.importorskip("prefect")

from tests.flows_helpers import sprite_folder, tiny_params, write_params

pytestmark = pytest.mark.pipeline


def test_prepare_flow_matches_library_and_reports(tmp_path: Path, prefect_harness: None) -> None:
    from prefect.artifacts import Artifact

    from flows.fetch import fetch
    from flows.prepare import prepare_flow
    from stylegan.config import section
    from stylegan.data.prepare import prepare

    src = sprite_folder(tmp_path / "sprites", n=12)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "13.png").write_bytes((src / "1.png").read_bytes())  # an exact duplicate
    params = tiny_params(data={"source": str(src), "workers": 2})
    write_params(tmp_path / "params.yaml", params)

    record = fetch(section(params, "data"), tmp_path)  # a local source: recorded, not copied
    assert record == tmp_path / "data" / "raw" / "source.json" and "broken.png" in record.read_text()

    summary = prepare_flow(params_path="params.yaml", root=str(tmp_path))
    assert summary["images"] == 12 and summary["status"] == {"duplicate": 1, "ok": 12, "rejected": 1}
    # Same bytes as the library's own (multiprocessing) preparation, whatever the chunking.
    ref = tmp_path / "ref"
    data_cfg = section({**params, "data": {**params["data"], "out_dir": str(ref)}}, "data")
    prepare(data_cfg, tmp_path, workers=1)
    for name in ("images_16.npy", "images_8.npy", "manifest.csv"):
        assert filecmp.cmp(tmp_path / "data" / "prepared" / name, ref / name, shallow=False), name

    artifact = Artifact.get("prepare-summary")
    assert artifact is not None and "duplicate" in str(artifact.data) and "ok" in str(artifact.data)


def test_a_chunk_task_survives_a_crashing_decoder_and_the_pool_stays_usable(tmp_path: Path) -> None:
    # The flow's chunk tasks share one supervised pool: a decoder crash is that file's row, and
    # the next task (where a retry used to resubmit to a broken ProcessPoolExecutor) still runs.
    from flows.prepare import prepare_chunk_task
    from stylegan.config import section
    from stylegan.data.sources import list_inputs
    from stylegan.data.workers import DecodePool
    from tests.faults import hooks

    src = sprite_folder(tmp_path / "sprites", n=4)
    (src / "2.png").write_bytes((src / "2.png").read_bytes() + hooks.CRASH)
    cfg = section(tiny_params(data={"source": str(src), "workers": 1}), "data")
    items = list_inputs(cfg)
    with DecodePool(cfg, workers=1, initializer=hooks.faulty_decoder) as pool:
        first = [r.row for r in prepare_chunk_task.fn(0, items, pool)]
        second = [r.row for r in prepare_chunk_task.fn(1, items, pool)]
    assert [(r["source"], r["reason"]) for r in first] == [
        ("1.png", ""), ("2.png", "crashed_decoder"), ("3.png", ""), ("4.png", "")
    ]
    assert first == second
