"""The Pokédex: a species classifier trained on the sprites, the project's in-domain yardstick.

``network`` (the CNN), ``store`` (load/save, "looks like"), ``names`` (species names from the
npm ``pokemon`` package), ``train`` (the split by animation and the training loop).

Names are imported lazily, so that fetching the names package (``names``) never pays for
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Match": "stylegan.pokedex.store",
    "Pokedex": "stylegan.pokedex.store",
    "PokedexError": "stylegan.pokedex.store",
    "load_pokedex": "stylegan.pokedex.store",
    "save_pokedex": "stylegan.pokedex.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stylegan.pokedex' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
