"""Sampling from the model registry: pull a registered generator, write PNGs and a grid.

    python -m flows.sample --params params.yaml            # models:/<registry.name>@<champion>
    python -m flows.sample --model models:/pokemon-stylegan/3 -S sample.seeds=0-15

``load_registered_generator(uri)`` is also what ``pokegan sample --model models:/...`` calls.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import base_parser, load_run_params, resolve, write_json
from flows.tracking import registry, store
from stylegan.config import section
from stylegan.io import OutputDirError


def load_registered_generator(uri: str, device: str = "cpu", root: str | Path = ".") -> Any:
    """The Generator behind a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI.

    Reads the pickle-free export inside the logged model (no model code is run). A missing
    model, alias or version raises ``registry.RegistryError`` (a LookupError) naming what exists.
    """
    import mlflow

    from stylegan.checkpoint import load_generator

    client = store.setup(root)
    mv = registry.resolve_version(client, uri)
    with tempfile.TemporaryDirectory(prefix="pokegan-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=tmp))
        found = sorted(local.rglob("generator.safetensors"))
        if not found:
            raise registry.RegistryError(
                f"{uri} (v{mv.version}) holds no generator.safetensors; it was not logged by pokegan's train flow"
            )
        G = load_generator(found[0].parent, device=device)
    G.registry_version = str(mv.version)  # for messages: which version was sampled
    return G


CHUNK = 64  # images generated and written at a time: memory does not grow with the seed count


def _write_samples(G: Any, seeds: list[int], psi: float, noise_mode: str, out_dir: Path,
                   extra: dict[str, Any] | None = None, cutoff: int | None = None) -> dict[str, Any]:
    """PNGs ``seed<NNNN>.png``, ``grid.png`` and ``sample.json``, written into a temp sibling of
    ``out_dir`` and swapped in only once complete (``stylegan.io.replace_dir``: ``out_dir`` must be
    missing, empty or an earlier sample output; anything else is refused and left alone)."""
    from stylegan.io import replace_dir
    from stylegan.sampling import GRID_MAX, image_grid, iter_generate, save_images

    def fill(tmp: Path) -> dict[str, Any]:
        shown: list[Any] = []
        res = 0
        for part, images in iter_generate(G, seeds, CHUNK, truncation_psi=psi, truncation_cutoff=cutoff,
                                           noise_mode=noise_mode):
            save_images(images, tmp, [f"seed{s:04d}" for s in part])
            shown.extend(images[: max(0, GRID_MAX - len(shown))])
            res = int(images.shape[1])
        cols = max(1, math.ceil(math.sqrt(len(shown))))
        image_grid(shown, cols).save(tmp / "grid.png")
        info = {"count": len(seeds), "grid": str(out_dir / "grid.png"), "grid_count": len(shown), "resolution": res,
                **(extra or {})}
        write_json(tmp / "sample.json", info)
        return info

    return replace_dir(out_dir, fill, what="sample.out_dir")


@task(name="sample-images", cache_policy=NO_CACHE)
def sample_task(uri: str, seeds: list[int], psi: float, noise_mode: str, out_dir: str, root: str,
                cutoff: int | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    G = load_registered_generator(uri, root=root)
    extra = {"model_uri": uri, "version": G.registry_version, "truncation_psi": psi, "truncation_cutoff": cutoff,
             "noise_mode": noise_mode}
    info = _write_samples(G, seeds, psi, noise_mode, Path(out_dir), extra, cutoff)
    logger.info("wrote %d images (%dx%d) from %s (v%s) to %s", info["count"], info["resolution"],
                info["resolution"], uri, info["version"], out_dir)
    return info


@flow(name="pokegan-sample", log_prints=True)
def sample_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                model_uri: str | None = None) -> dict[str, Any]:
    """Pull the champion (or ``model_uri``) from the registry and write images + a grid."""
    from stylegan.io import check_replaceable
    from stylegan.sampling import parse_seeds

    root_p = Path(root).resolve()
    params = load_run_params(root_p / params_path, overrides or [])
    cfg = section(params, "sample")
    reg = section(params, "registry")
    uri = model_uri or f"models:/{reg.name}@{reg.champion_alias}"
    out_dir = resolve(root_p, cfg.out_dir)
    check_replaceable(out_dir, "sample.out_dir")  # before the model is pulled: a refused folder costs nothing
    return sample_task(uri, parse_seeds(cfg.seeds), cfg.truncation_psi, cfg.noise_mode, str(out_dir), str(root_p),
                       cfg.truncation_cutoff)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="models:/NAME@ALIAS or models:/NAME/VERSION (default: champion)")
    args = parser.parse_args(argv)
    try:
        sample_flow(params_path=args.params, overrides=args.overrides, root=args.root, model_uri=args.model)
    except (registry.RegistryError, OutputDirError) as exc:
        print(f"sample: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
