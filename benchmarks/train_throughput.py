"""Images/s and GFLOP/s of a full training step (D step with R1 + G step + EMA) per resolution and batch size.

Runs the real ``Trainer.train_step`` on random packed data at alpha = 1 (a fade-in step also
runs the previous resolution's ToRGB/FromRGB, a few percent more). GFLOP per step is counted
by ``torch.utils.flop_counter`` over whole steps (R1 averaged over ``--r1-interval`` steps),
after the timed ones. The machine load is printed alongside, since shared machines skew figures.

    python benchmarks/train_throughput.py --model-preset cpu --resolutions 8,16,32 --batch-sizes 32
    python benchmarks/train_throughput.py --model-preset paper --resolutions 128 --batch-sizes 2 \
        --fused-scale false,auto --warmup 1 --iters 2
    python benchmarks/train_throughput.py --device cuda --model-preset paper --amp bf16 --channels-last --compile
    python benchmarks/train_throughput.py --resolutions 32 --batch-sizes 16 --threads 2 \
        --set model.discriminator=projected --set model.projected_input=64 --set train.loss=hinge
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
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import train_step_flops  # before --library can shadow benchmarks/


def _library_from_argv(argv: list[str]) -> str | None:
    """``--library PATH``: import ``stylegan`` from another checkout (an older commit, to compare
    it under the same conditions); read before the imports below."""
    for i, a in enumerate(argv):
        if a == "--library" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--library="):
            return a.split("=", 1)[1]
    return None


_LIBRARY = _library_from_argv(sys.argv[1:])
if _LIBRARY:
    if not (Path(_LIBRARY) / "stylegan" / "__init__.py").is_file():
        sys.exit(f"train_throughput: error: --library {_LIBRARY} holds no stylegan/ package")
    sys.path.insert(0, str(Path(_LIBRARY).resolve()))

from stylegan.config import PRESETS, ConfigError, ModelConfig, TrainConfig, from_dict, set_override  # noqa: E402
from stylegan.training import Trainer  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _fused(text: str) -> list[bool | str]:
    out: list[bool | str] = []
    for x in text.split(","):
        if x not in ("auto", "true", "false"):
            raise argparse.ArgumentTypeError(f"--fused-scale takes auto, true or false, got {x!r}")
        out.append(x if x == "auto" else x == "true")
    return out


def amp_setting(name: str) -> Any:
    """``train.amp`` for ``none | auto | bf16 | fp16`` in the spelling this TrainConfig takes (an
    older ``--library`` has a boolean: bf16 autocast on CUDA when true)."""
    try:
        from_dict(TrainConfig, {"amp": name}, "train")
        return name
    except ConfigError:
        if name == "fp16":
            raise ConfigError("this TrainConfig's amp is a boolean (bf16 only); fp16 needs train.amp: fp16") from None
        return name != "none"


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
    count_flops: bool = True,
    train_overrides: dict[str, Any] | None = None,  # more TrainConfig keys (--set train.KEY=VALUE)
) -> tuple[float, float, float, float | None]:
    """(images/s, seconds/step, process CPU seconds/step, FLOPs/step or None) of ``iters`` timed
    steps after ``warmup`` untimed ones. CPU seconds (all threads) hold up better than wall time
    on a machine that other jobs share."""
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
        amp=amp_setting(amp),
        compile=compile_,
        device=device,
        r1_interval=r1_interval,
        # An older --library has no prefetch (it gathered batches inline).
        **({"prefetch": prefetch} if "prefetch" in TrainConfig.__dataclass_fields__ else {}),
        **(train_overrides or {}),
    )
    run = work / f"run-{resolution}-{batch_size}-{getattr(model_cfg, 'fused_scale', 'old')}"
    trainer = Trainer(model_cfg, train_cfg, data, run)
    for _ in range(warmup):
        trainer.train_step()
    _sync(trainer.device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        trainer.train_step()
    _sync(trainer.device)
    secs = (time.perf_counter() - t0) / iters
    cpu_secs = (time.process_time() - c0) / iters
    flops = None
    counted = trainer
    if count_flops:
        # Compiled graphs bypass the counter: count the same step on an eager twin.
        if compile_:
            counted = Trainer(model_cfg, replace(train_cfg, compile=False), data, run / "eager")
        flops = train_step_flops(counted)
    for t in {trainer, counted}:
        close = getattr(t, "close", None)  # the background prefetch worker, where there is one
        if callable(close):
            close()
    return batch_size / secs, secs, cpu_secs, flops


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
    p.add_argument("--fused-scale", type=_fused, default=["auto"],
                   help="model.fused_scale values to compare, e.g. false,auto (auto = fused at >= 128)")
    p.add_argument("--library", default=None,
                   help="import stylegan from this checkout instead (e.g. an older commit, to compare)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (it runs r1-interval more steps)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a model.* or train.* value (repeatable), e.g. model.discriminator=projected")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.model_preset]["model"]
    overrides = {"fmap_base": args.fmap_base, "fmap_max": args.fmap_max}
    sets: dict[str, Any] = {"model": {}, "train": {}}
    for assignment in args.sets:
        if not assignment.startswith(("model.", "train.")):
            p.error(f"--set takes model.KEY=VALUE or train.KEY=VALUE, got {assignment!r}")
        set_override(sets, assignment)
    model_cfg = from_dict(ModelConfig, {**preset, **{k: v for k, v in overrides.items() if v}, **sets["model"]},
                          "model")
    from_dict(TrainConfig, sets["train"], "train")  # a typo fails here, before any training
    top = max(args.resolutions)
    if top > model_cfg.max_resolution:
        model_cfg = replace(model_cfg, max_resolution=top)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{torch.get_num_threads()} threads, device {args.device}, preset {args.model_preset} "
        f"(z/w {model_cfg.z_dim}, fmap_base {model_cfg.fmap_base}, fmap_max {model_cfg.fmap_max}), "
        f"channels_last={args.channels_last} amp={args.amp} compile={args.compile} prefetch={args.prefetch} "
        f"r1_interval={args.r1_interval} warmup={args.warmup} iters={args.iters}"
        + (f" set {' '.join(args.sets)}" if args.sets else "")
    )
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    import stylegan

    has_fused = "fused_scale" in ModelConfig.__dataclass_fields__
    print(f"# library {Path(stylegan.__file__).resolve().parent}" + ("" if has_fused else " (no model.fused_scale)"))
    print(f"{'res':>5} {'batch':>6} {'fused':>6} {'img/s':>9} {'ms/step':>9} {'cpu_s/step':>10} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.resolutions:
            for bs in args.batch_sizes:
                for fused in args.fused_scale if has_fused else ["n/a"]:
                    cfg = replace(model_cfg, fused_scale=fused) if has_fused else model_cfg
                    ips, secs, cpu_secs, flops = measure(
                        cfg, res, bs, device=args.device, channels_last=args.channels_last, amp=args.amp,
                        compile_=args.compile, prefetch=args.prefetch, r1_interval=args.r1_interval,
                        warmup=args.warmup, iters=args.iters, work=Path(tmp), count_flops=not args.no_flops,
                        train_overrides=sets["train"],
                    )
                    gflop = f"{flops / 1e9:>11.1f} {flops / 1e9 / secs:>9.1f}" if flops else f"{'-':>11} {'-':>9}"
                    print(f"{res:>5} {bs:>6} {str(fused).lower():>6} {ips:>9.3f} {secs * 1000:>9.1f} "
                          f"{cpu_secs:>10.2f} {gflop}", flush=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
