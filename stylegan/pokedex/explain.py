"""What a generated image looks like: the Pokédex's top species and a portmanteau name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stylegan.pokedex.naming import portmanteau
from stylegan.pokedex.store import Match, Pokedex


@dataclass(frozen=True)
class Explanation:
    """A sample's "looks like" list (most likely first) and its name from the top two species."""

    name: str
    looks_like: tuple[Match, ...]

    def caption(self) -> str:
        return ", ".join(str(m) for m in self.looks_like)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "looks_like": [
            {"species_id": m.species_id, "name": m.name, "prob": round(m.prob, 4)} for m in self.looks_like]}


def explain(pokedex: Pokedex, images_nhwc: np.ndarray, k: int = 3) -> list[Explanation]:
    """One ``Explanation`` per uint8 ``(N, H, W, 3)`` image (what ``sampling.generate`` returns)."""
    if images_nhwc.ndim != 4 or images_nhwc.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images_nhwc.shape}")
    out = []
    for matches in pokedex.looks_like(images_nhwc, k=max(k, 2)):
        name = portmanteau(matches[0].name, matches[1].name)
        out.append(Explanation(name, tuple(matches[:k])))
    return out
