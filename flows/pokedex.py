"""The Pokédex as a Prefect flow: train the species classifier, track it in MLflow, register it.

The library (``stylegan.pokedex.train``) splits the prepared sprites by animation, trains and
writes ``models/pokedex/`` (pokedex.safetensors + pokedex.json). This flow adds what a tracked model
gets: an MLflow run in the experiment ``pokedex`` (params, per-epoch loss/lr/accuracy, held-out
top-1/top-5, the data lineage tags and the prepared dataset as its input), the folder as the run's
artifacts, a version of ``pokedex.registry_name`` with the alias ``pokedex.registry_alias`` (same
weights as a registered version: that version again), and ``metrics/pokedex.json`` for DVC.

Data without species labels (a folder of one's own images not named by dex number) has nothing
to learn: the flow then writes only ``models/pokedex/skipped.json`` (evaluation skips the
``*_dex`` metrics) and says so in ``metrics/pokedex.json``.

    python -m flows.pokedex --params params.yaml [-S pokedex.epochs=2]
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import METRICS_DIR, base_parser, load_run_params, resolve, write_json
from flows.tracking import datasets, provenance, registry, runs, store
from stylegan.config import PokedexConfig, section, to_dict

EXPERIMENT = "pokedex"  # the MLflow experiment of Pokédex runs
ARTIFACT = "pokedex"  # the model folder's path inside its run
METRICS_FILE = "pokedex.json"
SKIPPED = "skipped.json"  # the only file of models/pokedex when the data has no species labels
# The run's final metrics (name in MLflow, key in pokedex.json), logged at step = epochs.
FINAL_METRICS = (("held_out_top1", "top1"), ("held_out_top5", "top5"), ("train_top1", "train_top1"),
                 ("train_seconds", "train_seconds"), ("seconds_per_epoch", "seconds_per_epoch"))
DESCRIPTION = "Pokédex: species classifier of the Pokémon sprites (the *_dex metrics' features, 'looks like')"


class _EpochLogger:
    """The library's ``on_epoch`` callback: each epoch's loss, lr and accuracy as MLflow metrics (step = epoch)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def __call__(self, stats: Mapping[str, Any]) -> None:
        ts = int(time.time() * 1000)
        step = int(stats["epoch"])
        items = [Metric(k, float(v), ts, step) for k, v in stats.items() if k != "epoch"]
        with contextlib.suppress(Exception):  # a tracking hiccup must not cost the training
            self.client.log_batch(self.run_id, metrics=items)


@task(name="train-pokedex", cache_policy=NO_CACHE)
def train_task(cfg: PokedexConfig, data_root: str, out_dir: str, names: dict[int, str], device: str,
               on_epoch: Any) -> dict[str, Any]:
    from stylegan.pokedex.train import train_pokedex

    return train_pokedex(cfg, data_root, out_dir, names=names, device=device, on_epoch=on_epoch,
                         log=get_run_logger().info)


def write_skipped(out_dir: Path, reason: str) -> None:
    """``out_dir`` holding only ``skipped.json`` (swapped in whole, like a trained Pokédex)."""
    from stylegan.io import atomic_write_json, replace_dir

    replace_dir(out_dir, lambda tmp: atomic_write_json(tmp / SKIPPED, {"skipped": reason}), what="Pokédex model")


def publish(client: MlflowClient, run_id: str, cfg: PokedexConfig, out_dir: Path, info: Mapping[str, Any],
            lineage: Mapping[str, str]) -> dict[str, str]:
    """Log the folder as the run's artifacts and register it (the version with these weights, if one exists)."""
    sha = str(info["sha256"])
    existing = registry.version_with_tag(client, cfg.registry_name, "pokedex.sha256", sha)
    if existing is not None:
        version = str(existing.version)
        client.set_registered_model_alias(cfg.registry_name, cfg.registry_alias, version)
        return {"name": cfg.registry_name, "version": version, "alias": cfg.registry_alias,
                "model_uri": str(existing.source), "reused": "true"}
    client.log_artifacts(run_id, str(out_dir), ARTIFACT)
    model_uri = f"runs:/{run_id}/{ARTIFACT}"
    tags = {"pokedex.sha256": sha, "species": str(info["split"]["species"]), "width": str(info["width"]),
            "resolution": str(info["resolution"]), "epochs": str(info["epochs"]),
            **{f"held_out.{k}": f"{info[k]:.4f}" for k in ("top1", "top5") if info.get(k) is not None}, **lineage}
    version = registry.register(client, model_uri, cfg.registry_name, cfg.registry_alias, run_id, tags=tags,
                                description=DESCRIPTION)
    return {"name": cfg.registry_name, "version": version, "alias": cfg.registry_alias, "model_uri": model_uri,
            "reused": "false"}


@flow(name="pokegan-pokedex", log_prints=True)
def pokedex_flow(params_path: str = "params.yaml", overrides: list[str] | None = None,
                 root: str = ".") -> dict[str, Any]:
    """Train the Pokédex on the prepared data, log it to MLflow, register it, write metrics/pokedex.json."""
    from stylegan.pokedex.names import load_names
    from stylegan.pokedex.store import read_pokedex_info
    from stylegan.pokedex.train import NoSpeciesError
    from stylegan.training.device import resolve_device

    logger = get_run_logger()
    start = time.perf_counter()
    root_p = Path(root).resolve()
    params = load_run_params(root_p / params_path, overrides or [])
    cfg: PokedexConfig = section(params, "pokedex")
    data_cfg = section(params, "data")
    data_root = resolve(root_p, data_cfg.out_dir)
    out_dir = resolve(root_p, cfg.out_dir)
    metrics_path = root_p / METRICS_DIR / METRICS_FILE
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    names = load_names(cfg, root_p)  # a missing or tampered names package fails now, not after training

    client = store.setup(root_p)
    for dead in runs.reap_dead_runs(client, EXPERIMENT):
        logger.warning("MLflow run %s was left RUNNING by a killed process; marked KILLED", dead)
    exp_id = store.ensure_experiment(client, EXPERIMENT, root_p)
    run_id = client.create_run(exp_id, run_name=f"pokedex-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}",
                               tags={"pokegan.stage": "pokedex"}).info.run_id
    from prefect.runtime import flow_run

    runs.claim_run(client, run_id, flow_run.id)
    lineage = provenance.source_tags(root_p, data_cfg.out_dir)
    try:
        provenance.log_params(client, run_id, {"pokedex": to_dict(cfg), "data": {"out_dir": data_cfg.out_dir}})
        for k, v in lineage.items():
            client.set_tag(run_id, k, v)
        datasets.log_dataset(client, run_id, datasets.prepared_dataset(root_p, data_cfg), "training")
        try:
            train_task(cfg, str(data_root), str(out_dir), names, str(device), _EpochLogger(client, run_id))
        except NoSpeciesError as exc:
            reason = str(exc)
            logger.warning("Pokédex skipped: %s", reason)
            write_skipped(out_dir, reason)
            client.set_tag(run_id, "pokedex.skipped", reason[:5000])
            summary: dict[str, Any] = {"skipped": reason, "seconds": round(time.perf_counter() - start, 1)}
            write_json(metrics_path, summary)
            client.set_terminated(run_id, status="FINISHED")
            return summary
        _, full = read_pokedex_info(out_dir)  # what was written: architecture, label map, sha256
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(name, float(full[key]), ts, cfg.epochs) for name, key in FINAL_METRICS
                                          if full.get(key) is not None])
        registered = publish(client, run_id, cfg, out_dir, full, lineage)
        logger.info("%s %s v%s (%s) from run %s", "kept" if registered["reused"] == "true" else "registered",
                    registered["name"], registered["version"], registered["alias"], run_id)
    except BaseException:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            client.set_terminated(run_id, status="FAILED")
        raise
    split = full["split"]
    summary = {"top1": full["top1"], "top5": full["top5"], "train_top1": full["train_top1"],
               "species": split["species"], "train_images": split["train_images"],
               "held_out_images": split["held_out_images"], "held_out_animations": split["held_out_animations"],
               "epochs": full["epochs"], "train_seconds": full["train_seconds"],
               "seconds": round(time.perf_counter() - start, 1),
               "registered": {"name": registered["name"], "version": registered["version"]}, "run_id": run_id}
    write_json(metrics_path, summary)
    client.set_terminated(run_id, status="FINISHED")
    acc = ("no held-out animations" if full["top1"] is None
           else f"held-out top-1 **{full['top1']:.3f}**, top-5 **{full['top5']:.3f}**")
    create_markdown_artifact(
        key="pokedex-summary",
        markdown=(f"# Pokédex\n\n{split['species']} species, {split['train_images']} training images, "
                  f"{split['held_out_images']} held out ({split['held_out_animations']} animations): {acc}.\n\n"
                  f"Registered **{registered['name']} v{registered['version']}** as `{registered['alias']}` "
                  f"(MLflow run `{run_id}`)."),
        description="the species classifier of this run",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    pokedex_flow(params_path=args.params, overrides=args.overrides, root=args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
