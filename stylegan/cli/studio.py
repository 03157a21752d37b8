"""pokegan studio: the local web page to explore a model (the registry wired in from the flows)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylegan.cli.models import studio_registry
from stylegan.cli.options import int_at_least, model_options, set_threads, threads_option

DEFAULT_POKEDEX = "models/pokedex"  # what `dvc repro pokedex` trains (relative to the working directory)


def _default_model_uri(params_path: str) -> str:
    """models:/<registry.name>@<champion alias> from the params file (the defaults without one)."""
    from stylegan.config import RegistryConfig, load_params, section

    reg = section(load_params(params_path), "registry") if Path(params_path).is_file() else RegistryConfig()
    return f"models:/{reg.name}@{reg.champion_alias}"


def _default_model(params_path: str) -> str:
    """The shipped model (pretrained:sprites-32) when the checkout has it, else the registry's champion."""
    from stylegan import pretrained

    try:
        if pretrained.DEFAULT in pretrained.index(pretrained.ROOT):
            return pretrained.PREFIX + pretrained.DEFAULT
    except pretrained.PretrainedError:
        pass  # no index (an installed wheel without pretrained/): the registry's champion
    return _default_model_uri(params_path)


def _pokedex_dir(args: argparse.Namespace, model: str) -> str | None:
    """--pokedex; else None for a pretrained: model (its shipped one); else models/pokedex when it exists."""
    from stylegan import pretrained

    if args.pokedex is not None or pretrained.is_pretrained(model):
        return args.pokedex
    return DEFAULT_POKEDEX if Path(DEFAULT_POKEDEX).is_dir() else None


def _studio(args: argparse.Namespace) -> int:
    from stylegan.studio import StudioLimits, serve

    limits = StudioLimits(
        max_images=args.max_images, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), jobs=args.jobs,
        max_project_steps=args.max_project_steps,
    )
    model = args.model or _default_model(args.params)
    set_threads(args)
    try:
        return serve(model, host=args.host, port=args.port, device=args.device, limits=limits,
                     log=lambda msg: print(f"pokegan studio: {msg}", file=sys.stderr, flush=True),
                     registry_loader=studio_registry, pokedex=_pokedex_dir(args, model))
    except ImportError as exc:  # no fastapi/uvicorn: the message names the extra
        print(f"pokegan studio: error: {exc}", file=sys.stderr)
        return 2


def add_studio(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="a local web page to explore a model: seeds, truncation, mixing, "
                       "interpolation, projection, registered versions, \"looks like\" names")
    model_options(p, required=False)
    p._option_string_actions["--model"].help += (" (default: the shipped pretrained:sprites-32 when the checkout "
                                                 "has it, else the registry's champion, from --params)")
    p.add_argument("--params", default="params.yaml",
                   help="without the shipped model, where the default model's name and alias come from "
                        "(the registry section)")
    p.add_argument("--pokedex", default=None, metavar="DIR",
                   help="the Pokédex that names each image (\"looks like\" captions; default: the one shipped "
                        f"with a pretrained: model, else {DEFAULT_POKEDEX} when it exists; without one, no names)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback exposes the model)")
    p.add_argument("--port", type=int_at_least(0), default=7860, help="port (0 = any free one)")
    p.add_argument("--max-images", type=int_at_least(1), default=64, help="images one request may ask for")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest picture accepted for projection")
    p.add_argument("--jobs", type=int_at_least(1), default=2, help="requests rendering at once (more wait)")
    p.add_argument("--max-project-steps", type=int_at_least(1), default=1000, help="steps one projection may run")
    threads_option(p)
    p.set_defaults(func=_studio)
