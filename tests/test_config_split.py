"""The train config's run-defining part and its runtime part, and the params hashes they give.

The hashes below are run keys of existing runs and checkpoints: a refactor of stylegan/config.py or
stylegan/checkpoint.py must keep every one of them. A deliberate edit of params.yaml or params-gpu.yaml
changes theirs; then update the pinned value together with that edit.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import get_type_hints

import pytest

from stylegan import profile
from stylegan.checkpoint import params_hash
from stylegan.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    TrainRecipe,
    TrainRuntime,
    from_dict,
    load_params,
    section,
    to_dict,
)
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


RECIPE_FIELDS = (
    "start_resolution", "max_resolution", "fade_kimg", "stab_kimg", "final_kimg", "batch_size", "batch_sizes", "lr",
    "lrs", "betas", "eps", "loss", "r1_gamma", "r1_gammas", "r1_interval", "wgan_lambda", "wgan_epsilon",
    "projected_blur_sigma", "projected_blur_fade_kimg", "ema_kimg", "ema_rampup", "reset_optimizer_at_growth",
    "mirror", "noise_lr_mul", "augment", "augment_p", "augment_ops", "ada_target", "ada_kimg", "ada_interval",
    "init_from", "seed",
)
RUNTIME_FIELDS = (
    "device", "amp", "channels_last", "compile", "prefetch", "threads", "nproc_per_node", "tick_kimg",
    "snapshot_kimg", "keep_checkpoints", "grid_seeds", "truncation_psi",
)

# A value other than the default for every field: the runtime ones must keep the hash, the recipe ones move it.
RUNTIME_CHANGES = {
    "device": "cpu", "amp": "bf16", "channels_last": True, "compile": True, "prefetch": False, "threads": 2,
    "nproc_per_node": 2, "tick_kimg": 1.0, "snapshot_kimg": 7.0, "keep_checkpoints": 9, "grid_seeds": [5, 6],
    "truncation_psi": 0.5,
}
RECIPE_CHANGES = {
    "start_resolution": 4, "max_resolution": 8, "fade_kimg": 0.5, "stab_kimg": 0.25, "batch_size": 8,
    "batch_sizes": {8: 2}, "lr": 0.01, "lrs": {8: 0.02}, "betas": (0.5, 0.9), "eps": 1e-6, "loss": "hinge",
    "r1_gamma": "auto", "r1_gammas": {8: 1.0}, "r1_interval": 4, "wgan_lambda": 1.0, "wgan_epsilon": 0.01,
    "projected_blur_sigma": 2.0, "projected_blur_fade_kimg": 3.0, "ema_kimg": 1.0, "ema_rampup": 0.05,
    "reset_optimizer_at_growth": True, "mirror": False, "noise_lr_mul": 0.5, "augment": "ada", "augment_p": 0.2,
    "augment_ops": ["xflip"], "ada_target": 0.5, "ada_kimg": 10.0, "ada_interval": 8, "seed": 1,
}


def test_the_recipe_and_the_runtime_part_make_up_the_train_config_in_order() -> None:
    recipe = tuple(f.name for f in fields(TrainRecipe))
    runtime = tuple(f.name for f in fields(TrainRuntime))
    assert recipe == RECIPE_FIELDS and runtime == RUNTIME_FIELDS
    assert not set(recipe) & set(runtime)
    assert tuple(f.name for f in fields(TrainConfig)) == recipe + runtime
    assert tuple(to_dict(TrainConfig())) == recipe + runtime  # params.yaml's flat train section, in this order
    assert set(get_type_hints(TrainConfig)) == set(recipe + runtime)


def test_recipe_is_the_run_defining_part_of_the_config() -> None:
    cfg = tiny_train_config(lr=0.01, amp=True, tick_kimg=1.0)
    assert type(cfg.recipe) is TrainRecipe
    assert to_dict(cfg.recipe) == {k: v for k, v in to_dict(cfg).items() if k in RECIPE_FIELDS}
    assert cfg.amp == "auto" and cfg.recipe.batch_size_at(8) == 4 and cfg.recipe.lr_at(8) == 0.01
    assert replace(cfg, seed=3).recipe == replace(cfg.recipe, seed=3)


def test_validate_checks_both_parts() -> None:
    with pytest.raises(ConfigError, match=r"train\.nproc_per_node must be >= 1"):
        from_dict(TrainConfig, {"nproc_per_node": 0}, "train")
    with pytest.raises(ConfigError, match=r"train\.r1_interval must be >= 1"):
        from_dict(TrainConfig, {"r1_interval": 0}, "train")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train\.tick; valid keys are: .*tick_kimg"):
        from_dict(TrainConfig, {"tick": 1}, "train")


@pytest.mark.parametrize("key", RUNTIME_FIELDS)
def test_a_runtime_field_keeps_the_params_hash(key: str) -> None:
    m, base = tiny_model_config(), TrainConfig()
    assert getattr(replace(base, **{key: RUNTIME_CHANGES[key]}), key) != getattr(base, key)
    assert params_hash(m, replace(base, **{key: RUNTIME_CHANGES[key]})) == params_hash(m, base)


@pytest.mark.parametrize("key", [k for k in RECIPE_FIELDS if k not in ("final_kimg", "init_from")])
def test_a_recipe_field_moves_the_params_hash(key: str) -> None:
    m, base = tiny_model_config(), TrainConfig()
    changed = replace(base, **{key: RECIPE_CHANGES[key]})
    assert getattr(changed, key) != getattr(base, key)
    assert params_hash(m, changed) != params_hash(m, base)


def test_the_recipe_fields_with_value_rules() -> None:
    m, base, sha = tiny_model_config(), tiny_train_config(), "ab" * 32
    assert params_hash(m, replace(base, final_kimg=100.0)) == params_hash(m, base)  # a schedule extension
    fine_tune = replace(base, init_from="a.pt")  # counted by its source's content hash, not its path
    assert params_hash(m, fine_tune, sha) != params_hash(m, base)
    assert params_hash(m, replace(fine_tune, init_from="elsewhere/a.pt"), sha) == params_hash(m, fine_tune, sha)
    assert params_hash(m, fine_tune, "cd" * 32) != params_hash(m, fine_tune, sha)
    assert params_hash(m, replace(base, max_resolution=None)) == params_hash(m, replace(base, max_resolution=16))
