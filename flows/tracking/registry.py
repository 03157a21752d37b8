"""The model registry: registering versions under an alias, resolving ``models:/`` URIs, the champion rule."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


class RegistryError(LookupError, ValueError):
    """A registered model, alias or version that does not exist (the message says what does)."""


def register(client: MlflowClient, model_uri: str, name: str, alias: str, run_id: str,
             tags: Mapping[str, str] | None = None,
             description: str = "StyleGAN generator (G_ema) trained on Pokémon sprites") -> str:
    """Register ``model_uri`` under ``name``, point ``alias`` at the new version, return the version.

    ``description`` is the registered model's, used when this call creates it."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)
    # An MLflow 3 model URI (models:/m-...) names its LoggedModel; a tracking server insists on model_id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=dict(tags or {}), model_id=model_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def version_with_tag(client: MlflowClient, name: str, tag: str, value: str) -> Any | None:
    """The newest version of ``name`` whose tag ``tag`` is ``value`` (e.g. the weights' sha256), or None:
    a re-run that produced the same weights reuses that version instead of registering them twice."""
    return version_with_tags(client, name, {tag: value})


def version_with_tags(client: MlflowClient, name: str, tags: dict[str, str]) -> Any | None:
    """The newest version of ``name`` carrying every one of ``tags`` with its value, or None."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    # Search results may come without tags; read each version (a handful) in full.
    for v in sorted(versions, key=lambda v: -int(v.version)):
        full = client.get_model_version(name, str(v.version))
        if all(full.tags.get(k) == v for k, v in tags.items()):
            return full
    return None


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
