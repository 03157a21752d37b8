"""A trained Pokédex on disk and in use: ``pokedex.safetensors`` + ``pokedex.json``, no pickle.

``pokedex.json`` holds the architecture (classes, width, resolution), the label map (class ->
national dex number and name), the sha256 of the weights, the held-out accuracy and where it
came from. ``load_pokedex`` checks the limits, the sha256 and the safetensors header against the
architecture before building anything, so a swapped or edited file is refused, not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylegan.io import atomic_write, atomic_write_json, check_safetensors_fit, read_format_json, sha256_file
from stylegan.pokedex.network import DexNet

FORMAT = "pokegan-pokedex"
FORMAT_VERSION = 1
WEIGHTS_NAME = "pokedex.safetensors"
CONFIG_NAME = "pokedex.json"
# Bounds on what a pokedex.json may ask to build (a hostile file must not exhaust memory).
LIMITS = {"num_classes": 4096, "width": 128, "resolution": 256}


class PokedexError(ValueError):
    """A Pokédex folder that is missing, corrupt, swapped or outside the limits."""


@dataclass(frozen=True)
class Match:
    """One "looks like" entry: a species and the Pokédex's probability for it."""

    species_id: int  # national dex number
    name: str
    prob: float

    def __str__(self) -> str:
        return f"{self.name} {self.prob:.0%}"


def save_pokedex(net: DexNet, out_dir: str | Path, species_ids: list[int], names: list[str],
                 info: dict[str, Any]) -> Path:
    """Write the weights (fp32) and pokedex.json into ``out_dir`` (each file atomically)."""
    from safetensors.torch import save as st_save

    if len(species_ids) != net.num_classes or len(names) != net.num_classes:
        raise ValueError(f"{net.num_classes} classes but {len(species_ids)} species ids and {len(names)} names")
    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = st_save(tensors, metadata={FORMAT: str(FORMAT_VERSION)})
    weights = atomic_write(out_dir / WEIGHTS_NAME, lambda f: f.write(blob))
    atomic_write_json(out_dir / CONFIG_NAME, {
        "format": FORMAT, "version": FORMAT_VERSION, "num_classes": net.num_classes, "width": net.width,
        "resolution": net.resolution, "species_ids": [int(s) for s in species_ids], "names": list(names),
        "sha256": sha256_file(weights), **info,
    })
    return out_dir


def read_pokedex_info(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(weights path, checked pokedex.json) of a Pokédex folder."""
    folder = Path(path)
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    fix = "train it with `pokegan pokedex` (or `dvc repro pokedex`)"
    if not weights.is_file() or not config.is_file():
        raise PokedexError(f"no Pokédex at {folder} (expected {WEIGHTS_NAME} and {CONFIG_NAME}); {fix}")
    info = read_format_json(config, FORMAT, "Pokédex", fix, PokedexError)
    if info.get("version") != FORMAT_VERSION:
        raise PokedexError(f"{config} has format version {info.get('version')}, this code reads {FORMAT_VERSION}")
    for key, top in LIMITS.items():
        value = info.get(key)
        if not isinstance(value, int) or not 1 <= value <= top:
            raise PokedexError(f"{config}: {key}={value!r} is outside 1..{top}; {fix}")
    n = info["num_classes"]
    if len(info.get("species_ids", [])) != n or len(info.get("names", [])) != n:
        raise PokedexError(f"{config}: {n} classes but {len(info.get('species_ids', []))} species ids and "
                           f"{len(info.get('names', []))} names; {fix}")
    return weights, info


class Pokedex:
    """A loaded, frozen Pokédex: features, species probabilities and "looks like" lists of images.

    Images are uint8 ``(N, 3, H, W)`` or ``(N, H, W, 3)`` arrays or tensors, any size.
    """

    def __init__(self, net: DexNet, info: dict[str, Any], batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        self.net = net.eval().requires_grad_(False).to(device)
        self.info = info
        self.species_ids: list[int] = list(info["species_ids"])
        self.names: list[str] = list(info["names"])
        self.batch_size = batch_size
        self.device = torch.device(device)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def name_of(self, species_id: int) -> str:
        return self.names[self.species_ids.index(species_id)]

    def _batches(self, images: np.ndarray | torch.Tensor, fn: Any, width: int) -> np.ndarray:
        from stylegan.training.effnet import batched_features

        with torch.inference_mode():
            return batched_features(images, self.batch_size, self.device, lambda x: x, fn, width)

    def features(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """float64 ``(N, feature_dim)``: the penultimate layer, the ``*_dex`` metrics' space."""
        return self._batches(images, self.net.features, self.feature_dim)

    __call__ = features  # a feature extractor, as ReferenceSet.features expects

    def probs(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """float64 ``(N, num_classes)`` softmax over the species."""
        return self._batches(images, lambda x: torch.softmax(self.net(x), dim=1), self.net.num_classes)

    def looks_like(self, images: np.ndarray | torch.Tensor, k: int = 3) -> list[list[Match]]:
        """The ``k`` most likely species of each image, most likely first (ties: lower class)."""
        p = self.probs(images)
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return [[Match(self.species_ids[c], self.names[c], float(row[c])) for c in cls]
                for row, cls in zip(p, order, strict=True)]


def load_pokedex(path: str | Path, device: str | torch.device = "cpu") -> Pokedex:
    """A Pokédex folder, checked (limits, sha256, header) before the network is built."""
    from safetensors.torch import load_file

    weights, info = read_pokedex_info(path)
    fix = "train it again with `pokegan pokedex` (or `dvc repro pokedex`)"
    sha = sha256_file(weights)
    if sha != info.get("sha256"):
        raise PokedexError(f"{weights} has sha256 {sha[:12]}, but {CONFIG_NAME} was written for "
                           f"{str(info.get('sha256'))[:12]}: the weights were swapped or damaged; {fix}")
    with torch.device("meta"):
        net = DexNet(info["num_classes"], info["width"], info["resolution"])
        wanted = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    check_safetensors_fit(weights, wanted, CONFIG_NAME, fix, PokedexError)
    net = DexNet(info["num_classes"], info["width"], info["resolution"])
    try:
        net.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except Exception as exc:
        raise PokedexError(f"{weights} does not load ({type(exc).__name__}: {exc}); {fix}") from exc
    return Pokedex(net, info, device=device)
