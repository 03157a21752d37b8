"""pokegan project: fit w (or w+ and noise maps) to a real image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylegan.cli.models import open_model
from stylegan.cli.options import check_dir_arg, int_at_least, model_options, set_threads, threads_option


def _project(args: argparse.Namespace) -> int:
    import time

    import torch

    from stylegan.projector import load_perceptual, load_target, project, save_projection

    if not Path(args.target).is_file():
        raise FileNotFoundError(f"--target {args.target} does not exist; pass an image file (PNG, JPEG, GIF, WebP)")
    check_dir_arg(args.out, "--outdir")
    set_threads(args)
    G = open_model(args)
    target = load_target(args.target, int(G.img_resolution), margin=None if args.no_crop else args.margin)

    def log(msg: str) -> None:
        print(f"pokegan project: {msg}", file=sys.stderr, flush=True)

    perceptual = None
    if args.perceptual_weight > 0:
        perceptual = load_perceptual(size=args.perceptual_size, log=log)
        if perceptual is not None:
            perceptual = perceptual.to(next(G.parameters()).device)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = project(
        G, target, steps=args.steps, w_plus=args.w_plus, optimize_noise=args.noise, perceptual=perceptual,
        pixel_weight=args.pixel_weight, perceptual_weight=args.perceptual_weight, seed=args.seed, log=log,
        log_every=max(1, args.steps // 10),
    )
    files = save_projection(result, args.out)
    print(f"projected {args.target} in {args.steps} steps ({time.perf_counter() - start:.1f} s): "
          f"mean |error| {result.pixel_error:.2f}/255 (from {result.start_error:.2f} at the average w), "
          f"PSNR {result.psnr:.2f} dB", flush=True)
    for name in ("w", "side_by_side", "gif"):
        if name in files:
            print(f"wrote {files[name]}", flush=True)
    return 0


def add_project(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("project", help="fit w (or w+ and noise maps) to a real image; writes projected_w.npz")
    model_options(p)
    p.add_argument("--target", required=True, metavar="IMAGE", help="the picture to project")
    p.add_argument("--steps", "--num-steps", dest="steps", type=int_at_least(1), default=500,
                   help="optimisation steps")
    p.add_argument("--outdir", "--out", dest="out", default="out",
                   help="projected_w.npz, target.png, proj.png, target_proj.png, proj.gif")
    p.add_argument("--w-plus", action="store_true", help="fit one w per style layer (W+) instead of one w")
    p.add_argument("--noise", action="store_true",
                   help="fit the noise maps too, with the official projector's noise regularisation")
    p.add_argument("--pixel-weight", type=float, default=1.0, help="weight of the pixel MSE")
    p.add_argument("--perceptual-weight", type=float, default=1.0,
                   help="weight of the EfficientNet-Lite0 feature distance (0 = pixels only)")
    p.add_argument("--perceptual-size", type=int_at_least(32), default=128,
                   help="side the images are resized to for the feature network")
    p.add_argument("--margin", type=float, default=0.08,
                   help="crop to the content and pad by this fraction, as prepare frames the training images")
    p.add_argument("--no-crop", action="store_true", help="keep the whole picture (padded to a square)")
    p.add_argument("--seed", type=int, default=303, help="seed of the w noise and initial noise maps")
    threads_option(p)
    p.set_defaults(func=_project)
