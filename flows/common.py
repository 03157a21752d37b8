"""Shared plumbing of the flows: params loading with overrides, paths, atomic JSON, small CLIs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stylegan.config import load_params
from stylegan.io import atomic_write_json

# Fixed locations of the pipeline's outputs (dvc.yaml names the same paths), relative to the root.
RUNS_DIR = "runs/train"  # one folder of checkpoints per (params, data) key; persisted across re-runs
MODEL_DIR = "models/generator"  # the exported G_ema of the last training (safetensors + JSON)
REGISTERED = "models/registered.json"  # which registry version that export became
METRICS_DIR = "metrics"  # DVC metrics and plots


def load_run_params(params_path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """params.yaml as a dict, with ``section.key=value`` overrides applied (for ad-hoc flow runs):
    the library's loader, ``stylegan.config.load_params``, with the flows' default path."""
    return load_params(params_path, overrides)


def resolve(root: str | Path, path: str | Path) -> Path:
    """A params path: relative ones are relative to the project root (the DVC working directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temp file + fsync + rename + folder fsync): a killed run leaves the
    old file or the new one, never half a file, and a power cut cannot lose the rename."""
    return atomic_write_json(path, data)


def read_json(path: str | Path, what: str, hint: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; {hint}")
    return json.loads(path.read_text())


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every ``python -m flows.<name>`` entry point takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one param for this run only (repeatable), e.g. -S train.max_resolution=16",
    )
    parser.add_argument("--root", default=".", help="project root that relative paths in params refer to")
    return parser
