"""The studio's HTTP API and page (FastAPI; every route is a thin call into stylegan.sampling / projector).

Images travel as PNG data URLs inside JSON; latents never leave the server except as a
``.npz`` download: an image is named by ``{"seed": N}`` or ``{"projection": "p3"}`` (a w the
server fitted and keeps), and psi / cutoff / noise apply to both, so a projected picture is
edited like any seed. With a Pokédex (``/api/info`` says ``"pokedex": true``), ``/api/render``
also names each image: ``"looks_like": [{"name", "looks_like": [{"name", "species_id", "prob"},
...top 3]}, ...]``, one per image, beside ``"images"``.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stylegan.studio.source import ModelSource, StudioLimits

STATIC = Path(__file__).with_name("static")
NoiseMode = Literal["const", "random", "none"]


class ImageRef(BaseModel):
    """One image: a seed, or a projection the server holds."""

    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    projection: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _one(self) -> ImageRef:
        if (self.seed is None) == (self.projection is None):
            raise ValueError("an item is {'seed': N} or {'projection': ID}")
        return self


class RenderSettings(BaseModel):
    """What every rendering request shares: the version and the truncation / noise settings."""

    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(default=None, max_length=32)
    psi: float = Field(default=0.7, ge=0.0, le=1.0)
    cutoff: int | None = Field(default=None, ge=1)
    noise_mode: NoiseMode = "const"


class RenderRequest(RenderSettings):
    items: list[ImageRef] = Field(min_length=1)


class MixRequest(RenderSettings):
    rows: list[ImageRef] = Field(min_length=1)  # destinations, down the left
    cols: list[ImageRef] = Field(min_length=1)  # sources across the top: their `styles` layers are copied in
    styles: Literal["coarse", "middle", "fine"] | tuple[int, int] = "coarse"  # or an inclusive layer range


class InterpolateRequest(RenderSettings):
    items: list[ImageRef] = Field(min_length=2)
    steps: int = Field(default=16, ge=1)
    space: Literal["w", "z"] = "w"
    loop: bool = True


class WRequest(RenderSettings):
    item: ImageRef


def png_data_url(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Studio:
    """State behind the routes: the model source, the projections, the job slots."""

    def __init__(self, source: ModelSource, limits: StudioLimits, perceptual: bool = True) -> None:
        self.source = source
        self.use_perceptual = perceptual
        self.limits = limits
        self.jobs = threading.BoundedSemaphore(limits.jobs)
        self.projecting = threading.BoundedSemaphore(limits.projections)
        self.projections: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @contextmanager
    def job(self) -> Iterator[None]:
        if not self.jobs.acquire(timeout=self.limits.wait_seconds):
            raise HTTPException(503, f"the studio is busy ({self.limits.jobs} requests rendering); try again")
        try:
            yield
        finally:
            self.jobs.release()

    def generator(self, version: str | None) -> torch.nn.Module:
        try:
            return self.source.get(version)
        except LookupError as exc:
            raise HTTPException(404, str(exc).splitlines()[0]) from None

    def ws(self, G: torch.nn.Module, items: list[ImageRef], settings: RenderSettings) -> torch.Tensor:
        """(N, num_ws, w_dim) for the items, truncated as ``settings`` says."""
        from stylegan.sampling import seeds_to_z

        if settings.cutoff is not None and settings.cutoff > G.num_ws:
            raise HTTPException(422, f"cutoff must be in 1..{G.num_ws} (this generator's style layers)")
        dev = next(G.parameters()).device
        out = []
        for it in items:
            if it.seed is not None:
                w = G.mapping(seeds_to_z([it.seed], G.z_dim).to(dev), truncation_psi=settings.psi,
                              truncation_cutoff=settings.cutoff)
            else:
                with self._lock:
                    p = self.projections.get(it.projection)
                if p is None:
                    raise HTTPException(404, f"no projection {it.projection!r} (the studio keeps the last "
                                             f"{self.limits.kept_projections}); project the picture again")
                if p["ws"].shape != (G.num_ws, G.w_dim):
                    raise HTTPException(422, f"projection {it.projection} was fitted to v{p['version']}, whose ws "
                                             "do not fit this version; project it again here")
                w = G.mapping.truncate(p["ws"][None].to(dev), settings.psi, settings.cutoff)
            out.append(w)
        return torch.cat(out)

    def perceptual(self, device: torch.device) -> Any:
        """The EfficientNet perceptual distance, loaded once (None without the metrics extra)."""
        from stylegan.projector import load_perceptual

        with self._lock:
            if not hasattr(self, "_perceptual"):
                self._perceptual = load_perceptual(log=None) if self.use_perceptual else None
            return self._perceptual.to(device) if self._perceptual is not None else None

    def check_count(self, n: int, what: str, limit: int | None = None) -> None:
        limit = limit or self.limits.max_images
        if n > limit:
            raise HTTPException(413, f"{n} {what} asked for; at most {limit} per request")

    def info(self, version: str | None) -> dict[str, Any]:
        from stylegan.training.networks import style_layer_range

        G = self.generator(version)
        styles = {}
        for name in ("coarse", "middle", "fine"):
            r = style_layer_range(name, G.num_ws)
            r = r if isinstance(r, range) else range(*r)
            if len(r):
                styles[name] = [r.start, r.stop - 1]
        lim = self.limits
        return {
            "model": self.source.spec, "registry": self.source.registry, "name": self.source.name,
            "version": version or self.source.default_version, "default_version": self.source.default_version,
            "resolution": int(G.img_resolution), "num_ws": int(G.num_ws), "w_dim": int(G.w_dim), "styles": styles,
            "pokedex": self.source.pokedex is not None,  # /api/render names each image ("looks_like")
            "limits": {"max_images": lim.max_images, "max_frames": lim.max_frames,
                       "max_upload_bytes": lim.max_upload_bytes, "max_project_steps": lim.max_project_steps,
                       "jobs": lim.jobs, "projections": lim.projections},
        }


def _styles_range(styles: str | tuple[int, int], num_ws: int) -> tuple[int, int]:
    """(start, stop) of ``styles``: a name, or an inclusive (lo, hi) pair as the page sends it."""
    from stylegan.sampling import style_range

    try:
        r = style_range(styles if isinstance(styles, str) else (styles[0], styles[1] + 1), num_ws)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return r.start, r.stop


def build_app(source: ModelSource, limits: StudioLimits, perceptual: bool = True) -> FastAPI:
    """``perceptual=False``: projections fit pixels only (faster; the tests use it)."""
    studio = Studio(source, limits, perceptual)
    app = FastAPI(title="pokegan studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable line ("psi: Input should be less than or equal to 1") instead of a nested list.
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info(version: Annotated[str | None, Query(max_length=32)] = None) -> dict[str, Any]:
        return studio.info(version)

    @app.get("/api/versions")
    def versions() -> dict[str, Any]:
        try:
            return {"registry": source.registry, "name": source.name, "default_version": source.default_version,
                    "versions": source.versions()}
        except Exception as exc:  # the store went away: say so, keep serving the loaded model
            raise HTTPException(502, f"could not read the registry: {type(exc).__name__}: {exc}") from None

    @app.post("/api/render")
    def render(req: RenderRequest) -> dict[str, Any]:
        from stylegan.projector import render_ws

        studio.check_count(len(req.items), "images")
        with studio.job(), torch.no_grad():
            G = studio.generator(req.version)
            images = render_ws(G, studio.ws(G, req.items, req), noise_mode=req.noise_mode)
            out: dict[str, Any] = {"images": [png_data_url(im) for im in images]}
            if source.pokedex is not None:  # per image: its name and top-3 species
                from stylegan.pokedex.explain import explain

                out["looks_like"] = [e.to_dict() for e in explain(source.pokedex, images)]
        return out

    @app.post("/api/mix")
    def mix(req: MixRequest) -> dict[str, Any]:
        from stylegan.projector import render_ws
        from stylegan.sampling import mix_ws

        studio.check_count(len(req.rows) * len(req.cols) + len(req.rows) + len(req.cols), "images (mixes + parents)")
        with studio.job(), torch.no_grad():
            G = studio.generator(req.version)
            lo, hi = _styles_range(req.styles, int(G.num_ws))
            dst, src = studio.ws(G, req.rows, req), studio.ws(G, req.cols, req)
            mixed = mix_ws(src, dst, range(lo, hi))
            imgs = render_ws(G, torch.cat([src, dst, mixed.flatten(0, 1)]), noise_mode=req.noise_mode)
        urls = [png_data_url(im) for im in imgs]
        n_src, n_dst = len(src), len(dst)
        cells = urls[n_src + n_dst :]
        return {"sources": urls[:n_src], "destinations": urls[n_src : n_src + n_dst],
                "mixed": [cells[i * n_src : (i + 1) * n_src] for i in range(n_dst)], "layers": [lo, hi - 1]}

    @app.post("/api/interpolate")
    def interpolate(req: InterpolateRequest) -> dict[str, Any]:
        from stylegan.sampling import interpolate as interpolate_seeds
        from stylegan.sampling import interpolate_ws, path_length

        studio.check_count(path_length(len(req.items), req.steps, req.loop), "frames", limits.max_frames)
        with studio.job(), torch.no_grad():
            G = studio.generator(req.version)
            if req.space == "z":
                if any(it.seed is None for it in req.items):
                    raise HTTPException(422, "z slerp needs seeds (a projection has no z); use w lerp")
                frames = interpolate_seeds(G, [it.seed for it in req.items], steps=req.steps, space="z",
                                           truncation_psi=req.psi, truncation_cutoff=req.cutoff,
                                           noise_mode=req.noise_mode, loop=req.loop)
            else:
                frames = interpolate_ws(G, studio.ws(G, req.items, req), steps=req.steps,
                                        noise_mode=req.noise_mode, loop=req.loop)
        return {"frames": [png_data_url(im) for im in frames]}

    @app.post("/api/w")
    def download_w(req: WRequest) -> Response:
        from stylegan.projector import npz_bytes

        with studio.job(), torch.no_grad():
            G = studio.generator(req.version)
            ws = studio.ws(G, [req.item], req)
        name = f"seed{req.item.seed:04d}" if req.item.seed is not None else f"projection-{req.item.projection}"
        return Response(npz_bytes(ws), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}_w.npz"'})

    @app.post("/api/project")
    async def project(
        request: Request,
        version: Annotated[str | None, Query(max_length=32)] = None,
        steps: Annotated[int | None, Query(ge=1)] = None,  # None = 200, or the limit if lower
        w_plus: bool = False,
        crop: bool = True,  # frame the picture as prepare frames training images (crop to content + margin)
    ) -> dict[str, Any]:
        """Body: the picture's bytes (any image type Pillow reads)."""
        steps = steps if steps is not None else min(200, limits.max_project_steps)
        if steps > limits.max_project_steps:
            raise HTTPException(413, f"steps {steps} is over this studio's limit of {limits.max_project_steps}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise HTTPException(413, f"the picture is {int(declared):,} bytes; at most {limits.max_upload_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a missing or false length cannot bypass it
            body += chunk
            if len(body) > limits.max_upload_bytes:
                raise HTTPException(413, f"the picture is over {limits.max_upload_bytes:,} bytes")
        if not body:
            raise HTTPException(400, "no picture in the request body; send the image file's bytes")
        if not studio.projecting.acquire(blocking=False):
            raise HTTPException(429, "a projection is already running; try again when it has finished")
        try:
            return await run_in_threadpool(_project_sync, studio, bytes(body), version, steps, w_plus, crop)
        finally:
            studio.projecting.release()

    return app


def _project_sync(
    studio: Studio, data: bytes, version: str | None, steps: int, w_plus: bool, crop: bool
) -> dict[str, Any]:
    from stylegan.projector import load_target, project

    with studio.job():
        G = studio.generator(version)
        try:
            target = load_target(data, int(G.img_resolution), margin=0.08 if crop else None)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        perceptual = studio.perceptual(next(G.parameters()).device)
        result = project(G, target, steps=steps, w_plus=w_plus, perceptual=perceptual, num_frames=0)
    pid = f"p{next(studio._ids)}"
    with studio._lock:
        studio.projections[pid] = {"ws": result.ws, "version": version or studio.source.default_version}
        while len(studio.projections) > studio.limits.kept_projections:
            studio.projections.popitem(last=False)
    return {"id": pid, "image": png_data_url(result.image), "target": png_data_url(result.target),
            "pixel_error": round(result.pixel_error, 3), "start_error": round(result.start_error, 3),
            "steps": steps, "w_plus": w_plus, "perceptual": perceptual is not None}
