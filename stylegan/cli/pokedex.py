"""pokegan pokedex: train the species classifier on the prepared sprites and write models/pokedex."""

from __future__ import annotations

import argparse
import sys

from stylegan.cli.options import check_dir_arg, int_at_least, set_threads


def _pokedex(args: argparse.Namespace) -> int:
    from stylegan.config import load_params, section
    from stylegan.pokedex.names import load_names
    from stylegan.pokedex.train import train_pokedex
    from stylegan.training.device import resolve_device

    params = load_params(args.params, args.set)
    cfg = section(params, "pokedex")
    data_root = args.data if args.data is not None else section(params, "data").out_dir
    out = args.out if args.out is not None else cfg.out_dir
    check_dir_arg(out, "--out")
    if args.threads is None and cfg.threads > 0:
        args.threads = cfg.threads
    set_threads(args)
    device = resolve_device(args.device if args.device is not None else cfg.device)
    names = load_names(cfg)  # before training: a missing names package fails in a second, not after minutes
    info = train_pokedex(cfg, data_root, out, names=names, device=device,
                         log=lambda msg: print(f"pokegan pokedex: {msg}", file=sys.stderr, flush=True))
    split = info["split"]
    if info["top1"] is None:
        print(f"held out: none ({split['species']} species, no species with two or more animations, or "
              "pokedex.holdout is 0)")
    else:
        print(f"held-out top-1 {info['top1']:.3f}  top-5 {info['top5']:.3f}  ({split['held_out_images']} images of "
              f"{split['held_out_animations']} animations, {split['species']} species)")
    print(f"train top-1 {info['train_top1']:.3f}  {info['epochs']} epochs in {info['train_seconds']:.0f} s")
    print(f"wrote {out}", flush=True)
    return 0


def add_pokedex(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pokedex", help="train the Pokédex (a species classifier of the sprites: *_dex metrics and "
                       "'looks like') and report its held-out top-1/top-5")
    p.add_argument("--params", default="params.yaml", help="params file with the pokedex (and data) sections")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a param (repeatable), e.g. --set pokedex.epochs=2")
    p.add_argument("--data", default=None, help="prepared folder with manifest.csv and images_<R>.npy "
                   "(default: data.out_dir)")
    p.add_argument("--out", default=None, help="folder to write pokedex.safetensors + pokedex.json into "
                   "(default: pokedex.out_dir); replaced whole")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, auto (default: pokedex.device)")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch CPU threads (default: pokedex.threads; 1 is far faster on a busy machine)")
    p.set_defaults(func=_pokedex)
