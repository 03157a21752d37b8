"""Evaluation as a Prefect flow: metrics of the candidate, logged to its training run; champion rule.

Reads the candidate the train stage registered (``models/registered.json``), computes the
metrics of ``stylegan.metrics.evaluate_generator`` on the exported G_ema, logs them as
``eval.<name>`` in the same MLflow run (plus the visual reports as artifacts), then moves
the champion alias to the candidate when ``evaluate.champion_metric`` beats the champion's.

    python -m flows.evaluate --params params.yaml
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import (
    METRICS_DIR,
    MODEL_DIR,
    REGISTERED,
    base_parser,
    load_run_params,
    read_json,
    resolve,
    write_json,
)
from flows.tracking import datasets, logged_model, registry, store
from stylegan.config import EvaluateConfig, section


class ExportMismatchError(RuntimeError):
    """models/generator, models/registered.json and the registered version do not hold the same weights."""


def check_export_matches(export_dir: str | Path, registered: dict[str, Any], client: Any | None = None) -> str:
    """The export's sha256, after checking it is the generator ``registered`` names (and, with a
    client, the one the registered version was tagged with); ``ExportMismatchError`` otherwise.

    Evaluate measures ``models/generator`` but promotes ``registered["version"]``: a training
    killed between its export and its registration leaves the two out of step, and promoting
    would move the champion alias to weights nobody measured.
    """
    from stylegan.checkpoint import WEIGHTS_NAME
    from stylegan.io import sha256_file

    fix = ("re-run the train stage (`dvc repro train` or `python -m flows.train`): it registers the export, "
           "or re-uses the version that already holds these weights")
    weights = Path(export_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise ExportMismatchError(f"no exported generator at {weights}; {fix}")
    sha = sha256_file(weights)
    want = registered.get("generator_sha256")
    name, version = registered.get("name"), registered.get("version")
    if want != sha:
        raise ExportMismatchError(
            f"{weights} (sha256 {sha[:12]}) is not the generator models/registered.json names ({name} v{version}, "
            f"sha256 {str(want)[:12]}): training stopped between export and registration; {fix}")
    if client is not None:
        tag = client.get_model_version(name, str(version)).tags.get("generator.sha256")
        if tag is not None and tag != sha:
            raise ExportMismatchError(
                f"registry version {name} v{version} holds other weights (sha256 {tag[:12]}) than {weights} "
                f"(sha256 {sha[:12]}); {fix}")
    return sha


@task(name="compute-metrics", cache_policy=NO_CACHE)
def compute_metrics(
    export_dir: str, data_root: str, cfg: EvaluateConfig, out_dir: str, reports_dir: str
) -> dict[str, float]:
    """Every available metric of the exported G_ema; writes metrics/eval.json and reports/."""
    from stylegan.checkpoint import load_generator
    from stylegan.metrics import evaluate_generator

    logger = get_run_logger()
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)  # one thread is faster than two on a busy 2-core machine
    G = load_generator(export_dir, device="cpu")
    metrics = evaluate_generator(G, data_root, cfg, out_dir, reports_dir, metrics_file="eval.json",
                                 ticks=Path(out_dir) / "train_ticks.csv", log=logger.info)
    return {k: float(v) for k, v in metrics.items()}


@task(name="log-and-promote", cache_policy=NO_CACHE)
def log_and_promote(root: str, registered: dict[str, Any], metrics: dict[str, float], cfg: EvaluateConfig,
                    reg: Any, reports_dir: str, data_cfg: Any | None = None) -> registry.Decision:
    """Log the metrics (linked to the logged model and the evaluation dataset), then the champion rule."""
    logger = get_run_logger()
    client = store.setup(root)
    run_id = registered["run_id"]
    step = round(float(registered.get("kimg", 0.0)) * 1000)
    dataset = datasets.prepared_dataset(root, data_cfg, "evaluation") if data_cfg is not None else None
    logged_model.log_model_metrics(client, run_id, metrics, step=step, dataset=dataset,
                                   model_id=logged_model.model_id_of(client, reg.name, registered["version"]))
    if Path(reports_dir).is_dir():
        client.log_artifacts(run_id, reports_dir, "reports")
    if cfg.champion_metric not in metrics:
        raise KeyError(
            f"evaluate.champion_metric={cfg.champion_metric!r} was not computed; computed metrics: "
            f"{', '.join(sorted(metrics))}. Set evaluate.champion_metric in params.yaml to one of them"
        )
    for name, value in metrics.items():
        client.set_model_version_tag(reg.name, registered["version"], f"eval.{name}", repr(value))
    # What makes two evaluations comparable: the same resolution, sample counts, psi and data.
    protocol = {"resolution": int(registered["resolution"]), "num_samples": cfg.num_samples,
                "num_real": cfg.num_real, "truncation_psi": cfg.truncation_psi,
                "data": client.get_run(run_id).data.tags.get("data.fingerprint")}
    if cfg.champion_metric.endswith("_dex") and cfg.pokedex:
        # Dex metrics are measured by one Pokédex: another one (retrained) gives other figures.
        from stylegan.pokedex.store import read_pokedex_info

        protocol["pokedex"] = read_pokedex_info(cfg.pokedex)[1]["sha256"][:16]
    decision = registry.apply_champion_rule(
        client, reg.name, registered["version"], cfg.champion_metric, metrics[cfg.champion_metric],
        higher_is_better=cfg.higher_is_better, champion_alias=reg.champion_alias, protocol=protocol,
    )
    client.set_tag(run_id, "promotion.decision", "promoted" if decision.promoted else "rejected")
    client.set_tag(run_id, "promotion.reason", decision.reason)
    logger.info("%s v%s: %s", reg.name, registered["version"], decision.reason)
    return decision


@flow(name="pokegan-evaluate", log_prints=True)
def evaluate_flow(
    params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = "."
) -> dict[str, Any]:
    """Evaluate the registered candidate, log its metrics, apply the champion rule."""
    root_p = Path(root).resolve()
    params = load_run_params(root_p / params_path, overrides or [])
    cfg: EvaluateConfig = section(params, "evaluate")
    if cfg.pokedex is not None:  # models/pokedex is the project's, wherever the flow runs from
        cfg = replace(cfg, pokedex=str(resolve(root_p, cfg.pokedex)))
    reg = section(params, "registry")
    data_cfg = section(params, "data")
    export_dir = root_p / MODEL_DIR
    metrics_dir = root_p / METRICS_DIR
    reports_dir = resolve(root_p, cfg.reports_dir)
    registered = read_json(root_p / REGISTERED, "the train stage's registration record",
                           "run `dvc repro train` (or `python -m flows.train`) first")
    if registered.get("name") != reg.name:
        raise ValueError(f"the candidate was registered as {registered.get('name')!r} but registry.name is "
                         f"{reg.name!r}; re-run the train stage")

    # Before any metric: never measure one generator and promote another.
    check_export_matches(export_dir, registered, store.setup(root_p))
    metrics = compute_metrics(str(export_dir), str(resolve(root_p, data_cfg.out_dir)), cfg, str(metrics_dir),
                              str(reports_dir))
    decision = log_and_promote(str(root_p), registered, metrics, cfg, reg, str(reports_dir), data_cfg)
    write_json(metrics_dir / "promotion.json", {**decision.as_dict(), "name": reg.name,
                                                 "champion_alias": reg.champion_alias,
                                                 "champion_version": decision.version if decision.promoted
                                                 else decision.previous_version})
    table = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()))
    create_markdown_artifact(
        key="evaluation",
        markdown=(f"# {reg.name} v{registered['version']}\n\n| metric | value |\n|---|---|\n{table}\n\n"
                  f"**{'Promoted' if decision.promoted else 'Not promoted'}**: {decision.reason}"),
        description="metrics of the candidate and the champion decision",
    )
    return {"metrics": metrics, "decision": decision.as_dict()}


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    try:
        evaluate_flow(params_path=args.params, overrides=args.overrides, root=args.root)
    except ExportMismatchError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
