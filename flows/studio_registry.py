"""The studio's view of the MLflow registry: versions, their eval metrics and promotion decisions.

Imported by ``stylegan.studio`` only when it serves a ``models:/`` URI (the library never
imports mlflow); the same store as everything else (``store.setup``: ``MLFLOW_TRACKING_URI``
or the project's SQLite store).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from flows.tracking import registry, store


def resolve(uri: str, root: str | Path = ".") -> tuple[str, str]:
    """``models:/NAME@ALIAS`` (or ``/VERSION``) -> (name, version); RegistryError naming what exists."""
    mv = registry.resolve_version(store.setup(root), uri)
    return mv.name, str(mv.version)


def list_versions(name: str, root: str | Path = ".") -> list[dict[str, Any]]:
    """Every version of ``name``, newest first: aliases, eval metrics, promotion decision and reason."""
    client = store.setup(root)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)):
        tags = dict(mv.tags or {})
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:  # the training run holds every eval.<metric>; a deleted run leaves only the tags
                run_metrics = client.get_run(mv.run_id).data.metrics
            except Exception:
                run_metrics = {}
            metrics = {k.removeprefix("eval."): float(v) for k, v in run_metrics.items() if k.startswith("eval.")}
        for k, v in tags.items():
            if k.startswith("eval.") and k != "eval.protocol":
                with contextlib.suppress(ValueError):  # a tag that is not a number is not a metric
                    metrics.setdefault(k.removeprefix("eval."), float(v))
        out.append({
            "version": str(mv.version),
            "aliases": sorted(aliases.get(str(mv.version), [])),
            "created": int(mv.creation_timestamp or 0),
            "run_id": mv.run_id,
            "metrics": dict(sorted(metrics.items())),
            "decision": tags.get("promotion.decision"),
            "reason": tags.get("promotion.reason"),
            "metric": tags.get("promotion.metric"),
        })
    return out


def load(name: str, version: str, device: Any = "cpu", root: str | Path = ".") -> Any:
    """The generator of one version (the pickle-free export inside the logged model)."""
    from flows.sample import load_registered_generator

    return load_registered_generator(f"models:/{name}/{version}", device=str(device), root=root)
