from __future__ import annotations

import pytest

from stylegan.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
    load_params,
    section,
    set_override,
    set_overrides,
)


def test_unknown_key_is_rejected_with_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"model\.zdim"):
        from_dict(ModelConfig, {"zdim": 3}, "model")


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        from_dict(TrainConfig, {"lr": "fast"}, "train")


def test_int_keyed_tables_accept_string_keys() -> None:
    cfg = from_dict(TrainConfig, {"batch_sizes": {"64": 16}}, "train")
    assert cfg.batch_size_at(64) == 16
    assert cfg.batch_size_at(8) == cfg.batch_size


def test_override_parses_json_values() -> None:
    params: dict = {"train": {"lr": 0.001}}
    set_override(params, "train.lr=0.01")
    set_override(params, "model.max_resolution=32")
    assert section(params, "train").lr == 0.01
    assert section(params, "model").max_resolution == 32


def test_invalid_resolution_is_explained() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        from_dict(ModelConfig, {"max_resolution": 48}, "model")


def test_paper_channel_widths() -> None:
    cfg = ModelConfig()
    assert [cfg.channels(r) for r in cfg.resolutions] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert cfg.num_ws == 18


def test_fused_scale_accepts_auto_true_false_only() -> None:
    params: dict = {}
    for raw, expected in (("auto", "auto"), ("true", True), ("false", False)):
        set_override(params, f"model.fused_scale={raw}")  # as `dvc exp run -S` / `--set` spell it
        assert section(params, "model").fused_scale == expected
    assert ModelConfig().fused_at(64) is False and ModelConfig().fused_at(128) is True
    assert ModelConfig(fused_scale=True).fused_at(8) and not ModelConfig(fused_scale=False).fused_at(1024)
    for bad in ("yes", 1):
        with pytest.raises(ConfigError, match=r"model\.fused_scale"):
            from_dict(ModelConfig, {"fused_scale": bad}, "model")


def test_load_params_applies_overrides_in_order_and_none_reads_the_optional_default(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one params-with-overrides loader: the file, then each ``section.key=value`` in order;
    path None is ./params.yaml when it exists, else no params at all."""
    (tmp_path / "p.yaml").write_text("train:\n  lr: 0.001\n  seed: 1\n")
    params = load_params(tmp_path / "p.yaml", ["train.lr=0.01", "model.max_resolution=32", "train.lr=0.02"])
    assert params == {"train": {"lr": 0.02, "seed": 1}, "model": {"max_resolution": 32}}
    assert load_params(tmp_path / "p.yaml") == load_params(tmp_path / "p.yaml", None) == {
        "train": {"lr": 0.001, "seed": 1}}
    monkeypatch.chdir(tmp_path)
    assert load_params(None, ["data.max_resolution=16"]) == {"data": {"max_resolution": 16}}
    (tmp_path / "params.yaml").write_text("data:\n  workers: 2\n")
    assert load_params(None, ["data.max_resolution=16"]) == {"data": {"workers": 2, "max_resolution": 16}}
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        load_params(None, ["train.lr"])
    assert set_overrides({}, ["a.b=1", "a.c=[1,2]"]) == {"a": {"b": 1, "c": [1, 2]}}
