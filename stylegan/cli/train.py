"""pokegan train: train (or resume) the progressive StyleGAN, on one process or with torchrun; --export."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from stylegan.cli.options import check_dir_arg, check_file_arg, int_at_least, set_threads, threads_option

if TYPE_CHECKING:
    from stylegan.config import ModelConfig, TrainConfig


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
    from stylegan.training import distributed
    from stylegan.training.device import resolve_device
    from stylegan.training.schedule import stages

    distributed.check_global_batches(stages(train_cfg, model_cfg), train_cfg, nproc)
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
    from stylegan import profile, shared
    from stylegan.config import section
    from stylegan.training import Trainer, distributed
    from stylegan.training.device import resolve_device

    check_dir_arg(args.run_dir, "--run-dir")
    if args.export:
        check_dir_arg(args.export, "--export")  # before training, not after it
    if args.events:
        check_file_arg(args.events, "--events", "events.jsonl")
    set_threads(args)
    params = profile.load_params_with(args.profile, args.params, args.set)
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
            callbacks.append(shared.EventLog(args.events))
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


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or resume) the progressive StyleGAN from params.yaml")
    p.add_argument("--params", default="params.yaml", help="params file with model, train and data sections")
    p.add_argument("--profile", default=None, metavar="OVERLAY",
                   help="a params overlay (params-release.yaml, params-gpu.yaml) applied to --params before --set")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set train.lr=0.002")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--run-dir", default="runs/train", help="checkpoints and snapshots; an existing run resumes")
    p.add_argument("--stage", type=int, default=None, metavar="RES",
                   help="train up to the end of this resolution's stage only")
    p.add_argument("--max-steps", type=int_at_least(0), default=None,
                   help="stop (with a checkpoint) after this many steps")
    p.add_argument("--export", default=None, metavar="DIR", help="export G_ema (safetensors + JSON) here afterwards")
    threads_option(p)
    p.add_argument("--nproc-per-node", type=int_at_least(1), default=None, metavar="N",
                   help="train with N processes (one per GPU; gloo on CPU) started by torchrun; batch sizes stay "
                        "global (default: train.nproc_per_node). Several machines: run torchrun yourself (README)")
    p.add_argument("--events", default=None, metavar="FILE",
                   help="also append each tick, snapshot and stage end as a JSON line here (rank 0)")
    p.set_defaults(func=_train)
