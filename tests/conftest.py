"""Shared fixtures: CPU only, deterministic, no network, no user-level state touched."""

from __future__ import annotations

import os

import pytest
import torch

# Telemetry off and user-level stores out of reach for every test.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
