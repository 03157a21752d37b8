"""Images/s of a full training step (D step with R1 + G step + EMA) per resolution and batch size.

Runs the real ``Trainer.train_step`` on random packed data at alpha = 1 (a fade-in step also
runs the previous resolution's ToRGB/FromRGB, a few percent more). The machine load is
printed alongside, since shared machines skew figures.

    python benchmarks/train_throughput.py --model-preset cpu --resolutions 8,16,32 --batch-sizes 32
    python benchmarks/train_throughput.py --device cuda --model-preset paper --amp bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylegan.config import PRESETS, ModelConfig, TrainConfig, from_dict
from stylegan.training import Trainer


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model_cfg: ModelConfig,
    resolution: int,
    batch_size: int,
    *,
    device: str,
    channels_last: bool,
    amp: str,
    compile_: bool,
    prefetch: bool,
    r1_interval: int,
    warmup: int,
    iters: int,
    work: Path,
) -> tuple[float, float]:
    """(images/s, seconds/step) of ``iters`` timed steps after ``warmup`` untimed ones."""
    data = work / f"data{resolution}"
    if not data.exists():
        data.mkdir(parents=True)
        rng = np.random.RandomState(0)
        np.save(data / f"images_{resolution}.npy", rng.randint(0, 256, (256, 3, resolution, resolution), np.uint8))
    train_cfg = TrainConfig(
        start_resolution=resolution,
        max_resolution=resolution,
        batch_size=batch_size,
        channels_last=channels_last,
        amp=amp,
        compile=compile_,
        prefetch=prefetch,
        device=device,
        r1_interval=r1_interval,
    )
    trainer = Trainer(model_cfg, train_cfg, data, work / f"run-{resolution}-{batch_size}")
    for _ in range(warmup):
        trainer.train_step()
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        trainer.train_step()
    _sync(trainer.device)
    secs = (time.perf_counter() - t0) / iters
    return batch_size / secs, secs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-preset", choices=sorted(PRESETS), default="cpu", help="model sizes from config.PRESETS")
    p.add_argument("--resolutions", type=_ints, default=[8, 16, 32])
    p.add_argument("--batch-sizes", type=_ints, default=[32])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", nargs="?", const="auto", default="none", choices=["none", "auto", "bf16", "fp16"],
                   help="train.amp (bare --amp = auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                   help="gather the next batch in a background thread (train.prefetch)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--fmap-base", type=int, default=None, help="override the preset's fmap_base")
    p.add_argument("--fmap-max", type=int, default=None, help="override the preset's fmap_max")
    p.add_argument("--r1-interval", type=int, default=1, help="lazy R1 every k steps (1 = every step)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.model_preset]["model"]
    overrides = {"fmap_base": args.fmap_base, "fmap_max": args.fmap_max}
    model_cfg = from_dict(ModelConfig, {**preset, **{k: v for k, v in overrides.items() if v}}, "model")
    top = max(args.resolutions)
    if top > model_cfg.max_resolution:
        model_cfg = replace(model_cfg, max_resolution=top)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{torch.get_num_threads()} threads, device {args.device}, preset {args.model_preset} "
        f"(z/w {model_cfg.z_dim}, fmap_base {model_cfg.fmap_base}, fmap_max {model_cfg.fmap_max}), "
        f"channels_last={args.channels_last} amp={args.amp} compile={args.compile} prefetch={args.prefetch} "
        f"r1_interval={args.r1_interval}"
    )
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'res':>5} {'batch':>6} {'img/s':>9} {'ms/step':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            for bs in args.batch_sizes:
                ips, secs = measure(
                    model_cfg, res, bs, device=args.device, channels_last=args.channels_last, amp=args.amp,
                    compile_=args.compile, prefetch=args.prefetch, r1_interval=args.r1_interval,
                    warmup=args.warmup, iters=args.iters,
                    work=Path(tmp),
                )
                print(f"{res:>5} {bs:>6} {ips:>9.1f} {secs * 1000:>9.1f}", flush=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
