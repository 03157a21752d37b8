"""Generators that ship with the project: ``pretrained:NAME`` is ``pretrained/NAME/`` in the repo.

Each folder holds an export (``generator.safetensors``, fp16 storage, + ``generator.json``), the
Pokédex that names its samples (``pokedex/``), a model card (``README.md``) and its figures.
``pretrained/index.json`` holds the sha256 of every weights file: loading checks it (and then
the model limits and the safetensors header, as any export), so a damaged or swapped file is
refused before anything is built, and nothing in the folder is ever executed (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from stylegan.io import sha256_file

PREFIX = "pretrained:"
ROOT = Path(__file__).resolve().parents[1] / "pretrained"  # beside stylegan/ in the checkout
INDEX_NAME = "index.json"
DEFAULT = "sprites-32"  # what `pokegan studio` opens when given no --model (the best shipped model)
POKEDEX_DIR = "pokedex"


class PretrainedError(ValueError):
    """An unknown shipped model, or one whose files do not match the index."""


def is_pretrained(spec: str) -> bool:
    return spec.startswith(PREFIX)


def index(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """name -> its index entry (description, resolution, files: {relative path: sha256}, ...)."""
    path = (root or ROOT) / INDEX_NAME
    if not path.is_file():
        raise PretrainedError(f"no shipped models: {path} is missing (none is packaged in this checkout yet: "
                              "`bash scripts/release.sh`, then `pokegan release --export runs/release/export "
                              "--name NAME`; or give --model an export folder or models:/NAME@ALIAS)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"{path} is corrupt ({exc}); restore it with `git checkout {INDEX_NAME}`") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise PretrainedError(f"{path} is not a pokegan model index; restore it with git")
    return data


def folder(spec: str, root: Path | None = None, *, verify: bool = True) -> Path:
    """The folder of ``pretrained:NAME`` (or a bare NAME), every indexed file's sha256 checked."""
    name = spec[len(PREFIX):] if is_pretrained(spec) else spec
    entries = index(root)
    if name not in entries:
        raise PretrainedError(f"no shipped model {name!r}; `pokegan models` lists them "
                              f"({', '.join(sorted(entries)) or 'none'})")
    path = (root or ROOT) / name
    if verify:
        for rel, want in entries[name].get("files", {}).items():
            file = path / rel
            if not file.is_file():
                raise PretrainedError(f"{file} is missing; restore it with `git checkout -- {file}`")
            got = sha256_file(file)
            if got != want:
                raise PretrainedError(f"{file} has sha256 {got[:12]}, the index says {want[:12]}: the file was "
                                      f"damaged or swapped; restore it with `git checkout -- {file}`")
    return path


def load(spec: str, device: str | torch.device = "cpu", root: Path | None = None) -> torch.nn.Module:
    """The shipped generator, checked (sha256, limits, header), in eval mode."""
    from stylegan.checkpoint import load_generator

    return load_generator(folder(spec, root), device=device)


def pokedex_dir(spec: str, root: Path | None = None) -> Path:
    """The Pokédex that ships with ``spec`` (checked with the rest of the folder)."""
    return folder(spec, root) / POKEDEX_DIR
