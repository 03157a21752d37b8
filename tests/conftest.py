"""Shared fixtures: CPU only, deterministic, no network, no user-level state touched."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# Telemetry off and user-level stores out of reach for every test.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Tiny models run fastest single-threaded (and far faster on a shared, busy machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)  # a test that set more threads (pokegan train --threads) hands back one
