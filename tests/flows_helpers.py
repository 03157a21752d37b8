"""Helpers for the pipeline tests: tiny params, synthetic sprites and packed data."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, dict[str, Any]] = {
    "data": {"max_resolution": 16, "workers": 1, "min_size": 8},
    "model": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 64, "fmap_max": 16, "max_resolution": 16,
              "mbstd_group_size": 4},
    "train": {"start_resolution": 8, "fade_kimg": 0.064, "stab_kimg": 0.064, "final_kimg": 0.0, "batch_size": 8,
              "tick_kimg": 0.032,
              "snapshot_kimg": 0.032, "grid_seeds": [0, 1, 2, 3], "device": "cpu", "r1_interval": 4, "threads": 1},
    "evaluate": {"num_samples": 32, "num_real": 32, "batch_size": 32, "kid_subsets": 2, "kid_subset_size": 16,
                 "novelty_samples": 4, "swd_min_resolution": 8, "threads": 1},
    "sample": {"seeds": "0-5", "truncation_psi": 0.7},
    # No names package (the tests have no network); the toy data is 16x16, its sprites one species each.
    "pokedex": {"resolution": 16, "width": 4, "epochs": 2, "batch_size": 16, "threads": 1, "names_package": None},
}


def tiny_params(**sections: dict[str, Any]) -> dict[str, Any]:
    """The project's params.yaml shrunk to a model and schedule that train in seconds."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in {**copy.deepcopy(TINY)}.items():
        params[name].update(values)
    for name, values in sections.items():
        params[name].update(values)
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def sprite_folder(folder: Path, n: int = 24, size: int = 24, seed: int = 0) -> Path:
    """RGBA PNGs of coloured ellipses and boxes on transparency (what the sprites look like)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        colour = (*(int(c) for c in rng.randint(0, 255, 3)), 255)
        x0, y0 = (int(v) for v in rng.randint(1, size // 3, 2))
        x1, y1 = (int(v) for v in rng.randint(2 * size // 3, size - 1, 2))
        (d.ellipse if i % 2 else d.rectangle)([x0, y0, x1, y1], fill=colour)
        im.save(folder / f"{i + 1}.png")
    return folder


def packed_data(root: Path, n: int = 32, max_resolution: int = 16, seed: int = 0) -> Path:
    """data/prepared-style arrays (images_<R>.npy) + manifest.csv of blobs on white, no data code needed."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    big = np.full((n, max_resolution, max_resolution, 3), 255, np.uint8)
    yy, xx = np.mgrid[:max_resolution, :max_resolution] / max_resolution
    for i in range(n):
        cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
        big[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.randint(0, 200, 3)
    res = max_resolution
    while res >= 4:
        imgs = np.stack([np.asarray(Image.fromarray(b).resize((res, res), Image.BOX)) for b in big])
        np.save(root / f"images_{res}.npy", np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)))
        res //= 2
    (root / "manifest.csv").write_text("source,status\n" + "".join(f"{i}.png,ok\n" for i in range(n)))
    return root


# The files a temp DVC project copies from this checkout (the e2e and the remote tests).
PROJECT_FILES = ["stylegan", "flows", "dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"]


def copy_project(repo: Path, mlflow_db: Path) -> Path:
    """A new folder ``repo``: PROJECT_FILES from this checkout, and in mlruns/ a copy of ``mlflow_db``
    (the session's empty, migrated DB: making one per test takes seconds)."""
    repo.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, repo / name)
    (repo / "mlruns").mkdir()
    shutil.copyfile(mlflow_db, repo / "mlruns" / "mlflow.db")
    return repo


def project_env(repo: Path, prefect_home: Path) -> dict[str, str]:
    """The environment of git, dvc and the stages run in ``repo``: this venv's tools first on PATH, the
    repo's MLflow DB, no telemetry, a git identity, and the session's Prefect test server (so that each
    stage's flow skips starting a temporary one)."""
    from prefect.settings import PREFECT_API_URL  # here, not at the top: library tests import this module

    from flows import telemetry_env

    db = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": db, "MLFLOW_REGISTRY_URI": db,
        "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        **telemetry_env(),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }


def run_checked(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run ``cmd``; a non-zero exit fails the test with the command and the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out
