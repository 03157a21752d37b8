"""Where the studio's generators come from, and the limits on what one request may ask."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stylegan import pretrained
from stylegan.shared import PipelineMissing


@dataclass(frozen=True)
class StudioLimits:
    max_images: int = 64  # images one request may render (grid page, mix grid cells, frames / 4)
    max_frames: int = 256  # frames of one interpolation
    max_upload_bytes: int = 8 * 1024 * 1024  # largest picture accepted for projection
    max_project_steps: int = 1000  # steps one projection may run
    jobs: int = 2  # requests rendering at once; the others wait up to wait_seconds, then get 503
    wait_seconds: float = 60.0
    projections: int = 1  # projections at once; another one gets 429 meanwhile
    kept_projections: int = 64  # projected ws kept in memory (oldest dropped)
    cached_models: int = 2  # registered versions kept loaded


def open_pokedex(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, str | None]:
    """(the Pokédex at ``path``, None) or (None, why not): a missing or broken one means no captions."""
    from stylegan.pokedex import PokedexError, load_pokedex

    try:
        return load_pokedex(path, device=device), None
    except PokedexError as exc:
        return None, str(exc)


class ModelSource:
    """An export folder or a shipped model (one model) or a registered model (all its versions, loaded
    on demand), and optionally the Pokédex that names what it draws ("looks like" captions)."""

    def __init__(
        self,
        spec: str,  # export folder, .safetensors, pretrained:NAME, or models:/NAME@ALIAS / models:/NAME/VERSION
        *,
        device: str | torch.device = "cpu",
        cached_models: int = 2,
        registry: Any = None,  # an object with resolve/list_versions/load; None = registry_loader(spec)
        # models:/ URI -> its registry, called only for such a URI (the CLI's gives flows.studio_registry:
        # the library never imports the pipeline itself)
        registry_loader: Callable[[str], Any] | None = None,
        # A loaded Pokédex, or its folder (one that does not load: no captions, why in pokedex_note);
        # None = the one shipped with a pretrained: model, else none
        pokedex: Any = None,
        pretrained_root: Path | None = None,  # where pretrained:NAME lives; None = stylegan.pretrained.ROOT
    ) -> None:
        from stylegan.training.device import resolve_device

        self.spec = spec
        self.device = resolve_device(str(device))
        self.registry = spec.startswith("models:/")
        self._pretrained_root = pretrained_root if pretrained_root is not None else pretrained.ROOT
        shipped: Path | None = None
        self._cache: OrderedDict[str | None, torch.nn.Module] = OrderedDict()
        self._cache_size = max(1, cached_models)
        self._lock = threading.Lock()
        if self.registry:
            if registry is None:
                if registry_loader is None:
                    raise PipelineMissing(
                        f"{spec} needs a model registry: pass registry= or registry_loader= (the pokegan CLI "
                        "loads flows.studio_registry, from the pipeline extra); or pass an export folder"
                    )
                registry = registry_loader(spec)
            self._registry = registry
            self.name, self.default_version = registry.resolve(spec)
        elif pretrained.is_pretrained(spec):
            shipped = pretrained.folder(spec, self._pretrained_root)  # unknown or damaged: fails here
            self.name, self.default_version = spec, None
        else:
            from stylegan.checkpoint import read_generator_info

            read_generator_info(spec)  # a missing or foreign folder fails here, before serving
            self.name, self.default_version = Path(spec).name, None
        self.get(self.default_version)  # load now: a broken model fails at start, not on the first click
        self.pokedex_note: str | None = None  # why a Pokédex that was asked for is not loaded
        if pokedex is None and shipped is not None:
            pokedex = shipped / pretrained.POKEDEX_DIR
        if isinstance(pokedex, str | Path):
            pokedex, self.pokedex_note = open_pokedex(pokedex, self.device)
        self.pokedex = pokedex  # a stylegan.pokedex.Pokedex or None (no "looks like" captions)

    def versions(self) -> list[dict[str, Any]]:
        """Registered versions with aliases, eval metrics and the promotion decision ([] for a folder)."""
        return self._registry.list_versions(self.name) if self.registry else []

    def get(self, version: str | None = None) -> torch.nn.Module:
        """The generator of ``version`` (None = the one the studio started with); LookupError if unknown."""
        if not self.registry:
            if version not in (None, ""):
                raise LookupError(f"{self.spec} is an export folder with no versions; omit the version")
            version = None
        else:
            version = str(version) if version not in (None, "") else self.default_version
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
        if self.registry:
            G = self._registry.load(self.name, version, device=self.device)
        elif pretrained.is_pretrained(self.spec):
            G = pretrained.load(self.spec, device=self.device, root=self._pretrained_root)
        else:
            from stylegan.checkpoint import load_generator

            G = load_generator(self.spec, device=self.device)
        with self._lock:
            self._cache[version] = G
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return G
