"""Staged progressive training as a Prefect flow: one task per resolution.

Each stage task reads where the run directory stands (``stylegan.training.train_state.run_progress``)
and trains on from the newest checkpoint there (the previous stage's final one, or a rolling
one of this stage if an earlier attempt died), so a retry continues where it stopped and a
finished stage is skipped. The run directory is keyed by the model and train params, the prepared data and
the training code, so a changed param, dataset or model code starts a fresh run instead of
resuming a foreign one, and going back to earlier params finds their checkpoints again.

With ``train.nproc_per_node > 1`` each stage task runs ``torchrun`` as a subprocess (the
training processes never import prefect or mlflow); rank 0 appends every tick, snapshot and
stage end to ``run_dir/events-<R>.jsonl``, which the task follows and hands to the same
callbacks (tick CSV, MLflow, progress bar and artifact) as in a single process.

    python -m flows.train --params params.yaml [-S train.max_resolution=16]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import METRICS_DIR, MODEL_DIR, REGISTERED, RUNS_DIR, base_parser, load_run_params, resolve, write_json
from flows.tracking import callback, datasets, logged_model, provenance, registry, runs, store
from stylegan.config import ModelConfig, RegistryConfig, TrainConfig, section
from stylegan.io import atomic_write_bytes, sha256_file

POKEDEX_DIR = "models/pokedex"  # the pokedex stage's output (pokedex.out_dir), logged beside the generator

TICK_COLUMNS = ("kimg", "stage", "resolution", "alpha", "lr", "batch_size", "loss_G", "loss_D", "r1",
                "images_per_sec", "sec_per_tick", "augment_p", "ada_rt")


def data_fingerprint(data_root: Path) -> str:
    """A hash of the prepared data (its manifest, which lists every image's content hash)."""
    for name in ("manifest.csv", "manifest.parquet", "summary.json"):
        p = data_root / name
        if p.exists():
            return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    arrays = sorted(data_root.glob("images_*.npy"))
    if not arrays:
        raise FileNotFoundError(
            f"no prepared data in {data_root}; run `dvc repro prepare` (or `python -m flows.prepare`) first"
        )
    h = hashlib.sha256()
    for p in arrays:
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def run_key(model_cfg: ModelConfig, train_cfg: TrainConfig, fingerprint: str, code: str | None = None) -> str:
    """The trainer's params hash (bookkeeping settings such as tick_kimg, and final_kimg, excluded;
    a fine-tuning source counted by its weights' hash), the data's fingerprint and the training
    code's (``code``; default: the installed library's)."""
    from stylegan.checkpoint import code_fingerprint, params_hash
    from stylegan.training.transfer import read_init_source

    code = code_fingerprint() if code is None else code
    init_sha = read_init_source(train_cfg.init_from).sha256 if train_cfg.init_from else None
    blob = f"{params_hash(model_cfg, train_cfg, init_sha)}:{fingerprint}:{code}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class TickLog:
    """Trainer callback appending each tick to a CSV (the DVC plot of loss curves)."""

    def __init__(self, path: Path, resume_kimg: float) -> None:
        self.path = path
        rows = []
        if path.exists():
            # Ticks after the checkpoint we resume from will be trained (and logged) again.
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if float(r["kimg"]) <= resume_kimg + 1e-9]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, TICK_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(path, text.getvalue().encode())

    def on_tick(self, stats: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in stats.items()}
            csv.DictWriter(f, TICK_COLUMNS, extrasaction="ignore").writerow(row)


class Progress:
    """Trainer callback: a terminal progress bar and a Prefect progress artifact, over all stages."""

    def __init__(self, total_kimg: float, start_kimg: float, artifact_id: Any | None) -> None:
        from tqdm import tqdm

        self.total = max(total_kimg, 1e-9)
        self.artifact_id = artifact_id
        self._last_update = 0.0
        self._last_line = 0.0
        # A live bar on a terminal; in a log file (CI, nohup) one plain line every 30 s instead.
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=round(total_kimg, 3), initial=round(start_kimg, 3), unit="kimg", file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0, desc="train", leave=True, disable=not self.tty)

    def on_tick(self, stats: Mapping[str, Any]) -> None:
        kimg = float(stats["kimg"])
        now = time.monotonic()
        loss_G, loss_D = stats.get("loss_G", float("nan")), stats.get("loss_D", float("nan"))
        if self.tty:
            self.bar.n = round(min(kimg, self.total), 3)
            self.bar.set_description(f"train {stats.get('resolution', '?')}px")
            self.bar.set_postfix(loss_G=f"{loss_G:.3f}", loss_D=f"{loss_D:.3f}",
                                 img_s=f"{stats.get('images_per_sec', 0):.0f}", refresh=False)
            self.bar.refresh()
        elif now - self._last_line > 30.0:
            self._last_line = now
            print(f"train {stats.get('resolution', '?')}px: kimg {kimg:.1f}/{self.total:g} "
                  f"({100 * kimg / self.total:.0f}%), loss_G {loss_G:.3f}, loss_D {loss_D:.3f}, "
                  f"{stats.get('images_per_sec', 0):.0f} img/s", file=sys.stderr, flush=True)
        if self.artifact_id is not None and now - self._last_update > 2.0:
            self._last_update = now
            update_progress_artifact(self.artifact_id, progress=min(100.0, 100.0 * kimg / self.total))

    def close(self) -> None:
        self.bar.close()


def follow_process(cmd: Sequence[str], events: Path, callbacks: Iterable[Any], *, env: Mapping[str, str] | None = None,
                   poll_seconds: float = 1.0, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run ``cmd`` and, while it runs, hand each event rank 0 appends to ``events`` to ``callbacks``.

    Raises ``RuntimeError`` when the command fails (the task's retry then resumes the run)."""
    from stylegan.shared import EventReader, dispatch_event

    events.unlink(missing_ok=True)  # events of an earlier attempt were forwarded by that attempt
    reader = EventReader(events)
    callbacks = list(callbacks)
    proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env))
    try:
        while True:
            finished = proc.poll() is not None  # read after the exit too: the last events
            for event in reader.read():
                dispatch_event(event, callbacks)
                if on_event is not None:
                    on_event(event)
            if finished:
                break
            time.sleep(poll_seconds)
    finally:
        if proc.poll() is None:  # the task was cancelled or a callback raised: do not orphan the workers
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"training processes failed (torchrun exit status {proc.returncode}); their error is in "
                           "the log above. A retry resumes from the last checkpoint")


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """What the train flow's tasks share: configs, paths and ids only (no clients, progress bars or
    open files), so a task retry or a worker process gets exactly what the flow decided."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data_root: Path  # prepared images_<R>.npy
    run_dir: Path  # runs/train/<key>: checkpoints, ticks.csv, events
    params_file: Path | None = None  # what torchrun workers re-read (with the same overrides)
    root: Path | None = None  # the project
    key: str = ""  # the run key (params, data and training code)
    total_kimg: float = 0.0  # of the whole schedule, for the progress artifact
    progress_artifact: Any = None  # Prefect artifact id
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    registry: RegistryConfig | None = None
    export_dir: Path | None = None  # models/generator
    registered_path: Path | None = None  # models/registered.json
    lineage: Mapping[str, str] = dataclasses.field(default_factory=dict)  # tags of a fine-tuning source


def torchrun_stage_command(resolution: int, job: TrainJob, events: Path) -> list[str]:
    """torchrun, one process per GPU, running `pokegan train` up to the end of this stage."""
    from stylegan.training.distributed import torchrun_command

    train_cfg: TrainConfig = job.train_cfg
    args = ["train", "--params", str(job.params_file), "--data", str(job.data_root),
            "--run-dir", str(job.run_dir), "--stage", str(resolution), "--events", str(events)]
    if train_cfg.threads > 0:
        args += ["--threads", str(train_cfg.threads)]
    return torchrun_command(train_cfg.nproc_per_node, args)


def _worker_env() -> dict[str, str]:
    import stylegan

    env = dict(os.environ)
    # The workers import this same library, installed or not.
    src = str(Path(stylegan.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@task(name="train-stage", task_run_name="stage-{resolution}px", retries=1, retry_delay_seconds=1,
      cache_policy=NO_CACHE)
def train_stage(resolution: int, job: TrainJob) -> dict[str, Any]:
    """Train one progressive stage; resumes from the newest checkpoint, skips a finished stage.

    ``job`` holds only paths, configs and ids (no clients, bars or open files), so the task's
    inputs serialise and the MLflow client and progress bar are made here, in the task.
    """
    from stylegan.shared import StageResult
    from stylegan.training import Trainer
    from stylegan.training.train_state import run_progress

    logger = get_run_logger()
    model_cfg, train_cfg = job.model_cfg, job.train_cfg
    multi = train_cfg.nproc_per_node > 1
    # Where the run stands, from the newest checkpoint's header (the same checks as resuming; no
    # networks built); with torchrun the workers own the GPUs and build the trainers.
    at = run_progress(job.run_dir, model_cfg, train_cfg, job.data_root)
    if at.done(resolution):
        logger.info("stage %dx%d already complete in %s (params match); skipped", resolution, resolution,
                    job.run_dir)
        return {"resolution": resolution, "skipped": True, "start_kimg": at.kimg, "kimg": at.kimg,
                "seconds": 0.0}
    trainer = None if multi else Trainer(model_cfg, train_cfg, job.data_root, job.run_dir,
                                         device=train_cfg.device, callbacks=())
    start_kimg = at.kimg  # > the previous stage's end when a retry resumes mid-stage
    logger.info("stage %dx%d: starting at kimg %.3f (from %s)", resolution, resolution, start_kimg,
                at.checkpoint or "scratch")
    ticks = TickLog(Path(job.run_dir) / "ticks.csv", at.kimg)
    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    progress = Progress(job.total_kimg, at.kimg, job.progress_artifact)
    callbacks = [callback.MlflowTrainingCallback(client, job.mlflow_run_id), ticks, progress]
    try:
        if trainer is None:
            events = Path(job.run_dir) / f"events-{resolution}.jsonl"
            cmd = torchrun_stage_command(resolution, job, events)
            logger.info("stage %dx%d on %d processes: %s", resolution, resolution, train_cfg.nproc_per_node,
                        " ".join(cmd))
            ends: list[dict[str, Any]] = []
            follow_process(cmd, events, callbacks, env=_worker_env(),
                           on_event=lambda e: ends.append(e) if e.get("event") == "stage_end" else None)
            end = next((e for e in reversed(ends) if e["resolution"] == resolution), None)
            if end is None:
                raise RuntimeError(
                    f"the training processes exited without finishing the {resolution}x{resolution} stage")
            result = StageResult(resolution, float(end["kimg"]), Path(end["checkpoint"]), float(end["seconds"]))
        else:
            trainer.callbacks = callbacks
            result = trainer.run_stage(resolution)
    finally:
        progress.close()
    logger.info("stage %dx%d done: kimg %.3f in %.1f s -> %s", resolution, resolution, result.kimg,
                result.seconds, result.checkpoint)
    return {"resolution": resolution, "skipped": False, "start_kimg": start_kimg, "kimg": float(result.kimg),
            "seconds": float(result.seconds), "checkpoint": str(result.checkpoint)}


@task(name="export-and-register", cache_policy=NO_CACHE)
def export_and_register(job: TrainJob, final_resolution: int) -> dict[str, Any]:
    """Export G_ema pickle-free, log it as an MLflow model, register it with the candidate alias."""
    return publish(job, final_resolution, get_run_logger().info)


def export_generator_dir(export: Callable[[Path], Any], out: Path) -> str:
    """``export(folder)`` into ``out`` (a swap: never deleted first); returns the weights' sha256.

    ``out`` must be missing, empty or an earlier export (``stylegan.io.replace_dir``).
    """
    from stylegan.checkpoint import WEIGHTS_NAME
    from stylegan.io import replace_dir, sha256_file

    replace_dir(out, export, what=f"generator export {out}")
    return sha256_file(out / WEIGHTS_NAME)


def publish(job: TrainJob, final_resolution: int, log: Any = print) -> dict[str, Any]:
    """Export, register and write ``models/registered.json``, in an order a kill at any point survives.

    The export is swapped in whole; the registry is searched by the weights' sha256 first, so a
    re-run after a kill re-uses the version it registered (and just moves the alias) instead of
    registering the same weights twice; ``registered.json`` is written last, atomically, and the
    evaluate flow refuses to promote when it and the export disagree (``check_export_matches``).
    """
    from stylegan.training.train_state import export_run, run_progress

    run_dir, model_cfg, train_cfg = job.run_dir, job.model_cfg, job.train_cfg
    kimg = run_progress(run_dir, model_cfg, train_cfg, job.data_root).kimg
    out = job.export_dir
    # The highest fully trained stage, from the run's newest checkpoint (no trainer built); metadata
    # ties the file back to its MLflow run.
    meta = {"mlflow_run_id": job.mlflow_run_id, "run_key": job.key}
    sha = export_generator_dir(lambda tmp: export_run(run_dir, tmp, model_cfg, train_cfg, meta), out)

    client = MlflowClient(tracking_uri=job.tracking_uri, registry_uri=job.tracking_uri)
    reg = job.registry
    # The Pokédex (the pokedex stage's output), when there is one: the served model names its images.
    pokedex = job.root / POKEDEX_DIR if job.root is not None else None
    # The stage writes only skipped.json for data without species labels: then no names.
    pokedex = pokedex if pokedex is not None and (pokedex / "pokedex.json").is_file() else None
    # A version is the generator and the Pokédex logged with it: a retrained Pokédex is a new version.
    pokedex_sha = sha256_file(pokedex / "pokedex.safetensors") if pokedex is not None else "none"
    existing = registry.version_with_tags(client, reg.name, {"generator.sha256": sha, "pokedex.sha256": pokedex_sha})
    if existing is not None:
        # Same weights and Pokédex as an already registered version (a forced re-run, or one killed
        # before its alias was set): reuse it.
        version, model_uri = existing.version, existing.source
        client.set_registered_model_alias(reg.name, reg.candidate_alias, version)
        log(f"generator unchanged; {reg.name} v{version} is {reg.candidate_alias} again")
    else:
        info = logged_model.log_generator_model(job.mlflow_run_id, out, step=round(kimg * 1000), pokedex_dir=pokedex)
        model_uri = info.model_uri
        version = registry.register(client, model_uri, reg.name, reg.candidate_alias, job.mlflow_run_id,
                                    tags={"generator.sha256": sha, "pokedex.sha256": pokedex_sha,
                                          "resolution": str(final_resolution), "kimg": f"{kimg:.3f}",
                                          "run_key": job.key, **job.lineage})
        log(f"registered {reg.name} v{version} ({reg.candidate_alias}) from run {job.mlflow_run_id}")
    registered = {"name": reg.name, "version": str(version), "alias": reg.candidate_alias, "model_uri": model_uri,
                  "run_id": job.mlflow_run_id, "generator_sha256": sha, "resolution": final_resolution,
                  "kimg": float(kimg), "tracking_uri": client.tracking_uri}
    write_json(job.registered_path, registered)
    return registered


def _end_mlflow_run(status: str, reason: str) -> Any:
    """A flow-run state hook: terminate the MLflow run(s) this flow run opened with ``status``."""

    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        root = Path(str((flow_run.parameters or {}).get("root", "."))).resolve()
        ended = runs.end_runs_of_flow_run(store.default_tracking_uri(root), str(flow_run.id), status,
                                          f"{reason}: {state.message or state.name}")
        if ended:
            print(f"MLflow run(s) {', '.join(ended)} marked {status} ({reason})", file=sys.stderr)

    hook.__name__ = f"mark_mlflow_run_{status.lower()}"
    return hook


def _open_mlflow_run(client: Any, run_dir: Path, key: str, root: Path) -> str:
    """The MLflow run of this run directory: resumed when it exists in this store, else created."""
    marker = run_dir / "mlflow_run.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("tracking_uri") == client.tracking_uri:
            try:
                run = client.get_run(saved["run_id"])
                client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
            except MlflowException:
                pass
    exp_id = store.ensure_experiment(client, store.EXPERIMENT, root)
    tags = {"pokegan.run_key": key, "pokegan.stage": "train"}
    run = client.create_run(exp_id, run_name=f"train-{key[:8]}", tags=tags)
    write_json(marker, {"run_id": run.info.run_id, "tracking_uri": client.tracking_uri})
    return run.info.run_id


INIT_DIR = "runs/init"  # registry models downloaded as fine-tuning sources (one folder per version)


def resolve_init_from(client: Any, params: dict[str, Any], root: Path, registry_name: str) -> dict[str, str]:
    """Turn ``train.init_from: models:/NAME@ALIAS`` (or ``/VERSION``) into the downloaded export folder
    (in ``params``, in place) and return lineage tags naming the parent. A local path stays as it
    is; its parent version is found by its weights' hash when the registry holds it."""
    import mlflow

    from stylegan import pretrained
    from stylegan.training.transfer import read_init_source

    spec = (params.get("train") or {}).get("init_from")
    if not spec:
        return {}
    tags: dict[str, str] = {"parent.init_from": str(spec)}
    if str(spec).startswith("models:/"):
        mv = registry.resolve_version(client, str(spec))
        target = root / INIT_DIR / f"{mv.name}-v{mv.version}"
        if not (target / "generator.safetensors").is_file():
            import tempfile

            (root / INIT_DIR).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=root / INIT_DIR) as tmp:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                                 dst_path=tmp))
                found = sorted(local.rglob("generator.safetensors"))
                if not found:
                    raise registry.RegistryError(f"{spec} (v{mv.version}) holds no generator.safetensors; "
                                                 "it was not logged by pokegan's train flow")
                staged = Path(tmp) / "export"
                shutil.copytree(found[0].parent, staged)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staged, target)  # whole folder or nothing
        params["train"]["init_from"] = str(target)
        tags.update({"parent.model_uri": str(spec), "parent.version": f"{mv.name}/{mv.version}",
                     "parent.run_id": str(mv.run_id or "")})
    spec_now = str(params["train"]["init_from"])
    shipped = pretrained.is_pretrained(spec_now)
    source = read_init_source(spec_now if shipped else resolve(root, spec_now))
    params["train"]["init_from"] = str(source.path)
    if shipped:
        tags["parent.pretrained"] = spec_now
    tags.update({"parent.sha256": source.sha256, "parent.kind": source.kind,
                 "parent.resolution": str(source.resolution)})
    if "parent.version" not in tags and source.kind == "export":
        same = registry.version_with_tag(client, registry_name, "generator.sha256", source.sha256)
        if same is not None:
            tags["parent.version"] = f"{registry_name}/{same.version}"
    return tags


@flow(name="pokegan-train", log_prints=True,
      # A crash (the process or its infrastructure died) or a cancellation still closes the
      # MLflow run; a SIGKILL runs no hook, so the next training reaps such runs (reap_dead_runs).
      on_crashed=[_end_mlflow_run("FAILED", "the flow run crashed")],
      on_cancellation=[_end_mlflow_run("KILLED", "the flow run was cancelled")])
def train_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> dict[str, Any]:
    """Train every progressive stage up to train.max_resolution, export G_ema, register the candidate."""
    from stylegan.training.schedule import stages

    logger = get_run_logger()
    root_p = Path(root).resolve()
    params = load_run_params(root_p / params_path, overrides or [])
    logged_params = json.loads(json.dumps(params))  # as written (a models:/ init_from stays a URI)
    reg = section(params, "registry")
    client = store.setup(root_p)
    lineage = resolve_init_from(client, params, root_p, reg.name)
    model_cfg: ModelConfig = section(params, "model")
    train_cfg: TrainConfig = section(params, "train")
    data_cfg = section(params, "data")
    data_root = resolve(root_p, data_cfg.out_dir)
    runs_root = root_p / RUNS_DIR
    export_dir = root_p / MODEL_DIR
    metrics_dir = root_p / METRICS_DIR

    if train_cfg.threads > 0:
        import torch

        # On a busy 2-core machine one thread is as fast as two (OpenMP threads wait on each other).
        torch.set_num_threads(train_cfg.threads)
    fingerprint = data_fingerprint(data_root)
    key = run_key(model_cfg, train_cfg, fingerprint)
    run_dir = runs_root / key
    run_dir.mkdir(parents=True, exist_ok=True)
    # The resolved params (file + overrides) for torchrun's workers, which read a params file.
    params_file = run_dir / "params.yaml"
    atomic_write_bytes(params_file, yaml.safe_dump(params, sort_keys=False).encode())
    logger.info("run directory %s (params + data key %s)", run_dir, key)

    for dead in runs.reap_dead_runs(client):
        logger.warning("MLflow run %s was left RUNNING by a killed process; marked KILLED", dead)
    run_id = _open_mlflow_run(client, run_dir, key, root_p)
    from prefect.runtime import flow_run

    runs.claim_run(client, run_id, flow_run.id)
    changed = provenance.log_params(client, run_id, logged_params)
    if changed:
        logger.info("continuing run %s with %s", key, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    for k, v in lineage.items():
        client.set_tag(run_id, k, v)
    for k, v in provenance.source_tags(root_p, data_cfg.out_dir).items():
        client.set_tag(run_id, k, v)
    client.set_tag(run_id, "data.fingerprint", fingerprint)
    datasets.log_dataset(client, run_id, datasets.prepared_dataset(root_p, data_cfg), "training")

    from stylegan.training.transfer import effective_train_config

    plan = stages(effective_train_config(train_cfg, model_cfg)[0], model_cfg)  # init_from: starts at its resolution
    total_kimg = float(plan[-1].end_kimg)
    artifact_id = create_progress_artifact(progress=0.0, key="train-progress",
                                           description=f"kimg trained of {total_kimg:g} ({len(plan)} stages)")
    job = TrainJob(model_cfg=model_cfg, train_cfg=train_cfg, data_root=Path(data_root), run_dir=Path(run_dir),
                   params_file=Path(params_file), root=root_p, key=key, total_kimg=total_kimg,
                   progress_artifact=artifact_id, tracking_uri=client.tracking_uri, mlflow_run_id=run_id,
                   registry=reg, export_dir=Path(export_dir), registered_path=root_p / REGISTERED, lineage=lineage)
    results = []
    try:
        with runs.system_metrics(run_id, client.tracking_uri):
            for st in plan:
                results.append(train_stage(st.resolution, job))
    except BaseException:
        # Best effort: when the store itself is down this fails too, and must not hide the reason.
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status="FAILED")
        raise
    update_progress_artifact(artifact_id, progress=100.0)
    final_res = plan[-1].resolution
    registered = export_and_register(job, final_res)

    ticks = run_dir / "ticks.csv"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    if ticks.exists():
        shutil.copyfile(ticks, metrics_dir / "train_ticks.csv")
        client.log_artifact(run_id, str(ticks), "ticks")
    summary = {"kimg": float(registered["kimg"]), "resolution": final_res,
               "seconds": sum(r["seconds"] for r in results),
               "stages": {str(r["resolution"]): {k: r[k] for k in ("start_kimg", "kimg", "seconds", "skipped")}
                          for r in results}}
    write_json(metrics_dir / "train.json", summary)
    client.set_terminated(run_id, status="FINISHED")
    rows = "\n".join(f"| {r['resolution']} | {'skipped' if r['skipped'] else 'trained'} | {r['kimg']:.1f} | "
                     f"{r['seconds']:.1f} |" for r in results)
    create_markdown_artifact(
        key="train-summary",
        markdown=(f"# Training {key}\n\n| resolution | status | kimg at end | seconds |\n|---|---|---|---|\n{rows}\n\n"
                  f"Registered **{registered['name']} v{registered['version']}** as `{registered['alias']}` "
                  f"(MLflow run `{run_id}`)."),
        description="progressive stages of this training run",
    )
    return registered


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    train_flow(params_path=args.params, overrides=args.overrides, root=args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
