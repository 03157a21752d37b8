"""The train config's run-defining part and its runtime part, and the params hashes they give.

The hashes below are run keys of existing runs and checkpoints: a refactor of stylegan/config.py or
stylegan/checkpoint.py must keep every one of them. A deliberate edit of params.yaml or params-gpu.yaml
changes theirs; then update the pinned value together with that edit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stylegan import profile
from stylegan.checkpoint import params_hash
from stylegan.config import PRESETS, ModelConfig, TrainConfig, load_params, section
from tests.helpers import TINY_MODEL, tiny_model_config, tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def _hash(params: dict) -> str:
    return params_hash(section(params, "model"), section(params, "train"))


@pytest.mark.parametrize(("name", "expected"), [
    ("params.yaml", "eb63e048a059238c"),
    ("params.yaml + params-gpu.yaml", "4ec177dfc553f4e2"),
    ("paper", "b85e0526d98fca5a"),
    ("cpu", "dcffc8e88dc083c3"),
])
def test_params_hash_of_the_project_configs_is_pinned(name: str, expected: str) -> None:
    if name == "params.yaml":
        params = load_params(REPO / "params.yaml")
    elif name.startswith("params.yaml + "):
        params = profile.load(REPO / "params-gpu.yaml", REPO / "params.yaml")[2]
    else:
        params = PRESETS[name]
    assert _hash(params) == expected, f"the params hash of {name} moved (an intended params edit? update it here)"


def test_params_hash_of_the_defaults_and_the_test_configs_is_pinned() -> None:
    assert params_hash(ModelConfig(), TrainConfig()) == "67ec332768fb64fa"
    assert params_hash(tiny_model_config(), tiny_train_config()) == "ce28853a0ff6c289"
    assert params_hash(ModelConfig(**TINY_MODEL), tiny_train_config()) == "9131c5e1923212c6"
    fine_tune = tiny_train_config(init_from="source.pt")
    assert params_hash(tiny_model_config(), fine_tune, "ab" * 32) == "973f972bb5caff0b"
