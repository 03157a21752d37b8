"""What a run was made from: its params (flattened), its code (git commit) and data (DVC hash) as tags."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


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
