"""The generator as a logged MLflow model (pyfunc, defined by code), and the metrics linked to it."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

import stylegan
from flows.tracking.datasets import log_dataset

MODEL_ARTIFACT = "generator"  # name of the logged model inside its run
PYFUNC_CODE = Path(__file__).parent.with_name("pyfunc_model.py")  # flows/pyfunc_model.py
# What the served model needs, besides the library's own dependencies: the pyfunc flavour's mlflow,
# from the extra that pins it.
SERVED_EXTRAS: dict[str, tuple[str, ...]] = {"pipeline": ("mlflow",)}
_LOWER_BOUNDS = (">=", ">", "~=", "===", "==")  # before the upper ones, as pyproject.toml spells a range


def _spelled(requirement: str) -> str:
    """``name<3,>=2.0`` (as setuptools writes a range into the metadata) as ``name>=2.0,<3``."""
    name = re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", requirement.strip())
    assert name is not None, requirement
    specs = [s.strip() for s in requirement.strip()[name.end():].split(",") if s.strip()]
    return name.group() + ",".join(sorted(specs, key=lambda s: not s.startswith(_LOWER_BOUNDS)))


def _declared_requirements() -> list[str]:
    """pokegan's requirements as the installed metadata lists them (``importlib.metadata.requires``,
    written from pyproject.toml by ``pip install -e .``); a checkout that is not installed reads its
    pyproject.toml into the same form."""
    try:
        return metadata.requires("pokegan") or []
    except metadata.PackageNotFoundError:
        import tomllib

        project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
        return [*project["dependencies"], *(f'{spec}; extra == "{name}"'
                                            for name, specs in project["optional-dependencies"].items()
                                            for spec in specs)]


def served_requirements(requirements: list[str] | None = None) -> list[str]:
    """The pins the served model needs: pokegan's core dependencies then ``SERVED_EXTRAS``'s, from
    ``requirements`` in the metadata's form (default: ``_declared_requirements()``), so that no pin
    is restated here."""
    core, extra = [], []
    for line in _declared_requirements() if requirements is None else requirements:
        spec, _, marker = line.partition(";")
        name = re.split(r"[\[<>=!~ ]", spec.strip(), maxsplit=1)[0]
        which = re.fullmatch(r"\s*extra\s*==\s*[\"']([^\"']+)[\"']\s*", marker)
        if not marker.strip():
            core.append(_spelled(spec))
        elif "extra" not in marker:  # a core dependency for some environments only
            core.append(f"{_spelled(spec)}; {marker.strip()}")
        elif which is not None and name in SERVED_EXTRAS.get(which.group(1), ()):
            extra.append(_spelled(spec))
    return core + extra


# Passed explicitly so log_model does not spend seconds inferring it.
PIP_REQUIREMENTS = served_requirements()


def model_signature(pokedex: bool = False) -> Any:
    """Input: seed (required), truncation_psi, noise_mode; output: seed + base64 PNG (+ name and
    looks_like, a JSON string, with a Pokédex); param ``output``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("long", "seed"),
            ColSpec("double", "truncation_psi", required=False),
            ColSpec("long", "truncation_cutoff", required=False),
            ColSpec("string", "noise_mode", required=False),
        ]
    )
    outputs = [ColSpec("long", "seed"), ColSpec("string", "image_png_base64")]
    if pokedex:
        outputs += [ColSpec("string", "name"), ColSpec("string", "looks_like")]
    outputs = Schema(outputs)
    params = ParamSchema([ParamSpec("output", "string", "png_base64")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example() -> Any:
    import pandas as pd

    return pd.DataFrame({"seed": [0, 1], "truncation_psi": [0.7, 0.7], "noise_mode": ["const", "const"]})


def log_generator_model(run_id: str, export_dir: str | Path, step: int = 0,
                        pokedex_dir: str | Path | None = None) -> Any:
    """Log the exported G_ema (safetensors + JSON) as a pyfunc model in ``run_id``; returns ModelInfo.

    ``step`` is the images shown when it was exported: MLflow links the run's metrics at that
    step (the last tick's losses) to the LoggedModel, and only those (the default, 0, would
    link the first system-metrics sample instead).

    ``pokedex_dir``: a Pokédex folder (``models/pokedex``), logged as a second artifact,
    ``pokedex``; the served model then names each image (``name`` and ``looks_like`` columns,
    see flows/pyfunc_model.py). It must load (checked here, before anything is logged).

    The model is defined by code (flows/pyfunc_model.py), not a pickle; ``stylegan/`` travels
    with it as code_paths so it loads in any process that has the pinned requirements.
    """
    export_dir = Path(export_dir)
    if not (export_dir / "generator.safetensors").exists():
        raise FileNotFoundError(f"no exported generator in {export_dir}; the train stage writes it")
    artifacts = {"generator": str(export_dir)}
    if pokedex_dir is not None:
        from stylegan.pokedex import load_pokedex

        load_pokedex(pokedex_dir)  # a missing, swapped or damaged Pokédex is refused before logging
        artifacts["pokedex"] = str(pokedex_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*type hint")
        warnings.filterwarnings("ignore", message="(?s).*integer column")
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            try:
                return mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=str(PYFUNC_CODE),
                    artifacts=artifacts,
                    code_paths=[str(Path(stylegan.__file__).parent)],  # the library, wherever it is imported from
                    signature=model_signature(pokedex=pokedex_dir is not None),
                    input_example=input_example(),
                    pip_requirements=PIP_REQUIREMENTS,
                    step=step,
                )
            finally:
                # Validating the input example loads the model, which makes it MLflow's "active
                # model" (a process-wide env var): every later metric without a model_id, of any
                # run, would be linked to it. Model metrics are linked explicitly instead.
                mlflow.clear_active_model()


def log_model_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], *, step: int,
                      model_id: str | None, dataset: Any | None, prefix: str = "eval.") -> None:
    """Log ``metrics`` to the run, linked to the logged model (its page shows them) and to the dataset.

    MLflow 3 keeps metrics carrying a ``model_id`` with the LoggedModel as well as the run, and
    the dataset name + digest say which data they were measured against.
    """
    import math

    ts = int(time.time() * 1000)
    name = dataset.name if dataset is not None else None
    digest = dataset.digest if dataset is not None else None
    items = [Metric(f"{prefix}{k}", float(v), ts, step, model_id=model_id, dataset_name=name, dataset_digest=digest)
             for k, v in metrics.items() if math.isfinite(float(v))]
    if dataset is not None:
        log_dataset(client, run_id, dataset, "evaluation")
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def model_id_of(client: MlflowClient, name: str, version: str) -> str | None:
    """The MLflow 3 LoggedModel id behind a registered version (None for pre-3 versions)."""
    mv = client.get_model_version(name, str(version))
    if getattr(mv, "model_id", None):
        return str(mv.model_id)
    source = str(mv.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
