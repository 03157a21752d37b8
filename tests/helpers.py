"""Helpers shared by the library tests. Imports no prefect, mlflow or dvc (see tests/flows_helpers.py for those)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# The CLI tests' model: 8x8 at most and narrow, so a whole schedule trains in seconds on CPU.
TINY_MODEL: dict[str, Any] = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 32, "fmap_max": 16,
                              "max_resolution": 8}


def write_noise_data(root: Path, n: int, resolutions: tuple[int, ...] = (4, 8), seed: int = 0) -> Path:
    """Random packed images (images_<R>.npy), as the prepare stage writes them: every batch, and every
    flip, is distinguishable."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for r in resolutions:
        np.save(root / f"images_{r}.npy", rng.integers(0, 256, (n, 3, r, r), dtype=np.uint8))
    return root


def write_cli_project(root: Path, images: int, kimg: float, grid_seeds: list[int],
                      evaluate: dict[str, Any]) -> Path:
    """A project as the CLI sees it: noise images prepared in root/prepared and a root/params.yaml that
    trains TINY_MODEL 4x4 then 8x8, fading in and stabilising for ``kimg`` each (batch 4, on CPU)."""
    data = write_noise_data(root / "prepared", images)
    params = {
        "data": {"out_dir": str(data)},
        "model": dict(TINY_MODEL),
        "train": {"start_resolution": 4, "fade_kimg": kimg, "stab_kimg": kimg, "batch_size": 4, "tick_kimg": kimg,
                  "snapshot_kimg": 1.0, "grid_seeds": grid_seeds, "device": "cpu"},
        "evaluate": evaluate,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@contextmanager
def alarm(seconds: int, message: str) -> Iterator[None]:
    """TimeoutError(message) after ``seconds`` in the main thread: a regression that blocks (a FIFO opened
    for reading, a hung decoder) fails the test instead of hanging the run."""

    def expire(*_: object) -> None:
        raise TimeoutError(message)

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), SIGKILL it after ``grace`` s:
    servers and workers have children that terminating ``proc`` alone would leave running."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
