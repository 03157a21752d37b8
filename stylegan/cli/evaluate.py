"""pokegan evaluate: metrics and visual reports of an exported or registered generator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylegan.cli.models import load_model
from stylegan.cli.options import check_dir_arg, check_file_arg, model_options


def _evaluate(args: argparse.Namespace) -> int:
    from stylegan.config import load_params, section
    from stylegan.metrics import evaluate_generator

    params = load_params(args.params, args.set)
    from stylegan.training.device import resolve_device

    cfg = section(params, "evaluate")
    if args.pokedex is not None or args.model.startswith("pretrained:"):
        from dataclasses import replace

        from stylegan import pretrained

        cfg = replace(cfg, pokedex=args.pokedex or str(pretrained.pokedex_dir(args.model)))
    if not 0.0 <= cfg.truncation_psi <= 1.0:  # also rejects nan
        raise ValueError(f"evaluate.truncation_psi must be in [0, 1] (1 = no truncation), got {cfg.truncation_psi}")
    data_root = args.data if args.data is not None else section(params, "data").out_dir
    out = Path(args.out)
    check_file_arg(out, "--out", "eval.json")
    reports = args.reports if args.reports is not None else cfg.reports_dir
    check_dir_arg(reports, "--reports")
    if args.ticks is not None and not Path(args.ticks).is_file():
        raise FileNotFoundError(f"--ticks {args.ticks} does not exist; pass the trainer's train_ticks.csv or omit it")
    device = resolve_device(args.device)  # clear error for an unknown device or missing CUDA
    G = load_model(args.model, device)
    metrics = evaluate_generator(
        G, data_root, cfg, out.parent, reports,
        metrics_file=out.name, ticks=args.ticks, device=device,
        log=lambda msg: print(f"pokegan evaluate: {msg}", file=sys.stderr, flush=True),
    )
    width = max(len(k) for k in metrics) if metrics else 0
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.6g}")
    print(f"wrote {out}", flush=True)
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics (SWD, FD-effnet, KID, precision/recall, FID if weights exist, "
                       "memorization) and visual reports of an exported or registered generator")
    model_options(p)
    p.add_argument("--params", default="params.yaml", help="params file with the evaluate (and data) sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set evaluate.num_samples=200")
    p.add_argument("--data", default=None, help="folder of images_<R>.npy (default: data.out_dir)")
    p.add_argument("--out", default="metrics/eval.json", help="metrics JSON (written atomically)")
    p.add_argument("--reports", default=None, help="folder for the figures (default: evaluate.reports_dir)")
    p.add_argument("--pokedex", default=None, metavar="DIR",
                   help="the Pokédex for the *_dex metrics and looks_like.png (default: evaluate.pokedex; for a "
                        "pretrained: model, the one shipped with it)")
    p.add_argument("--ticks", default=None,
                   help="training tick log (CSV) for loss curves (default: train_ticks.csv next to --out, if any)")
    p.set_defaults(func=_evaluate)
