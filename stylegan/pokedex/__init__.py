"""The Pokédex: a species classifier trained on the sprites, the project's in-domain yardstick.

``network`` (the CNN), ``store`` (load/save, "looks like"), ``names`` (species names from the
npm ``pokemon`` package), ``train`` (the split by animation and the training loop).

Names are imported lazily, so that fetching the names package (``names``) never pays for
importing torch.
"""

from __future__ import annotations

from stylegan.shared import lazy_exports

_EXPORTS = {
    "Match": "stylegan.pokedex.store",
    "Pokedex": "stylegan.pokedex.store",
    "PokedexError": "stylegan.pokedex.store",
    "load_pokedex": "stylegan.pokedex.store",
    "save_pokedex": "stylegan.pokedex.store",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
