"""The generator a command names, and the CLI's only hooks into the flows (lazy imports).

An export folder loads with the library alone; a ``models:/`` URI goes through the flows
package (MLflow's registry), so the library itself never imports mlflow or flows.
"""

from __future__ import annotations

import argparse

from stylegan.shared import PipelineMissing


def load_model(spec: str, device: object) -> object:
    if spec.startswith("models:/"):
        # Registry hook: the flows package resolves MLflow URIs; the library never imports mlflow.
        try:
            from flows.sample import load_registered_generator
        except ImportError as exc:
            raise PipelineMissing(
                f"loading {spec} needs the pipeline extra (mlflow and the flows package): "
                f"pip install 'pokegan[pipeline]' ({exc}); or pass a local export folder to --model"
            ) from exc
        return load_registered_generator(spec).to(device)
    from stylegan import pretrained

    if pretrained.is_pretrained(spec):
        return pretrained.load(spec, device=device)
    from stylegan.checkpoint import load_generator

    return load_generator(spec, device=device)


def open_model(args: argparse.Namespace) -> object:
    """The generator for --model on --device (a PipelineMissing for a registry URI without mlflow)."""
    from stylegan.training.device import resolve_device

    device = resolve_device(args.device)  # clear error for cuda on a machine without it
    return load_model(args.model, device)


def pokedex_for(args: argparse.Namespace) -> object:
    """The Pokédex for --explain: --pokedex, else the one shipped with a pretrained: model, else
    models/pokedex (what `dvc repro` trains)."""
    from pathlib import Path

    from stylegan import pretrained
    from stylegan.pokedex import PokedexError, load_pokedex

    path = args.pokedex
    if path is None:
        path = pretrained.pokedex_dir(args.model) if pretrained.is_pretrained(args.model) else Path("models/pokedex")
    try:
        return load_pokedex(path)
    except PokedexError as exc:
        raise PokedexError(f"--explain needs a Pokédex: {exc}; or pass --pokedex DIR") from None


def studio_registry(spec: str) -> object:
    """flows.studio_registry for a models:/ URI: the CLI wires the registry into the studio, so the
    library itself never imports flows (called by ModelSource, only for such a URI)."""
    try:
        from flows import studio_registry
    except ImportError as exc:
        raise PipelineMissing(
            f"{spec} needs the pipeline extra (mlflow and the flows package): pip install "
            f"'pokegan[pipeline]' ({exc}); or pass an export folder to --model"
        ) from exc
    return studio_registry
