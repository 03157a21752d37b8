"""pokegan studio: a local web page over one model (an export folder, a shipped ``pretrained:``
model or a registered model), its samples named by a Pokédex when one is given or shipped.

The page (static/) is plain HTML/JS/CSS served from this package, with no CDN. The app
(``app.py``) needs FastAPI and uvicorn (the ``studio`` extra); registered models are read
through a registry the caller supplies (the CLI loads ``flows.studio_registry``, the ``pipeline``
extra, only for a ``models:/`` URI; the library never imports flows).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stylegan.studio.source import ModelSource, StudioLimits

__all__ = ["ModelSource", "StudioLimits", "create_app", "serve"]


def _fastapi_missing(exc: ImportError) -> ImportError:
    return ImportError(
        f"the studio needs FastAPI and uvicorn: pip install 'pokegan[studio]' ({exc})"
    )


def create_app(source: ModelSource, limits: StudioLimits | None = None, perceptual: bool = True) -> Any:
    """The FastAPI app serving ``source`` (see ``app.py`` for the routes); ``perceptual=False``
    makes projections fit pixels only."""
    try:
        from stylegan.studio.app import build_app
    except ImportError as exc:
        raise _fastapi_missing(exc) from exc
    return build_app(source, limits or StudioLimits(), perceptual)


def serve(
    model: str,  # export folder, .safetensors, pretrained:NAME, or models:/NAME@ALIAS / models:/NAME/VERSION
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    limits: StudioLimits | None = None,
    log: Callable[[str], None] = print,
    registry_loader: Callable[[str], Any] | None = None,  # models:/ URI -> its registry (see ModelSource)
    pokedex: str | Path | None = None,  # a Pokédex folder for "looks like" names; None = the shipped one, if any
) -> int:
    """Load the model, then serve the studio until Ctrl-C."""
    try:
        import uvicorn
    except ImportError as exc:
        raise _fastapi_missing(exc) from exc
    source = ModelSource(model, device=device, registry_loader=registry_loader, pokedex=pokedex)
    app = create_app(source, limits)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"binding {host}: anyone who can reach this address can use the model and this machine's CPU")
    if source.pokedex_note is not None:
        log(f"no \"looks like\" names: {source.pokedex_note}")
    where = f"{source.spec} (v{source.default_version})" if source.registry else source.spec
    log(f"serving {where} on http://{host if ':' not in host else f'[{host}]'}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
