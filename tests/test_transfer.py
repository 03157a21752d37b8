"""Training a finished run longer (final_kimg raised) and fine-tuning from another run (train.init_from)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stylegan.checkpoint import CheckpointError, params_hash
from stylegan.training import Trainer
from stylegan.training.transfer import read_init_source
from tests.helpers import tiny_model_config, tiny_train_config, write_toy_data


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _quick(**kw):  # one 4x4 stage of 2 steps (batch 4), then final_kimg more; ADA and lazy R1 on
    base = {"max_resolution": 4, "stab_kimg": 0.008, "final_kimg": 0.008, "snapshot_kimg": 1.0, "grid_seeds": [0],
            "ema_rampup": 0.05, "augment": "ada", "ada_kimg": 0.05, "ada_interval": 2, "r1_interval": 2}
    return tiny_train_config(**{**base, **kw})


def test_training_longer_continues_the_finished_run_bit_for_bit(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data", (4,))
    m = tiny_model_config()
    straight = Trainer(m, _quick(final_kimg=0.016), data, tmp_path / "straight")
    straight.run()

    short = Trainer(m, _quick(), data, tmp_path / "run")
    short.run()
    assert short.kimg == pytest.approx(0.016)
    assert params_hash(m, _quick()) == params_hash(m, _quick(final_kimg=0.016))  # same run key
    longer = Trainer(m, _quick(final_kimg=0.016), data, tmp_path / "run")
    assert longer.resumed_from is not None and longer.kimg == pytest.approx(0.016) and not longer.stage_done(4)
    longer.run()
    assert longer.kimg == straight.kimg == pytest.approx(0.024)
    for name in ("G", "G_ema", "D"):
        _same_weights(getattr(straight, name), getattr(longer, name))
    assert straight.ada is not None and longer.ada is not None and float(straight.ada.p) == float(longer.ada.p)

    # Lowering final_kimg below what the run has trained is refused, not silently ignored.
    with pytest.raises(CheckpointError, match="final_kimg may only be raised"):
        Trainer(m, _quick(final_kimg=0.0), data, tmp_path / "run")
    # Any other change still needs a new run, and the error names what changed.
    with pytest.raises(CheckpointError, match="changed: lr"):
        Trainer(m, _quick(final_kimg=0.016, lr=0.01), data, tmp_path / "run")


def test_a_finished_run_whose_last_step_passed_the_end_reloads(tmp_path: Path) -> None:
    # The last step may pass the schedule's end by part of a batch (the CPU profile's 23 kimg at
    # batch 16 ends at 23.008): that run is finished, not "trained past the end".
    data = write_toy_data(tmp_path / "data", (4,))
    m = tiny_model_config()
    t = _quick(final_kimg=0.010)  # ends at 0.018 kimg; batch 4 stops at 0.020
    first = Trainer(m, t, data, tmp_path / "run")
    first.run()
    assert first.kimg == pytest.approx(0.020)
    again = Trainer(m, t, data, tmp_path / "run")
    assert again.resumed_from is not None and again.stage_done(4) and again.kimg == pytest.approx(0.020)


def test_finetune_from_a_checkpoint_or_an_export_and_grow_on(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data", (4, 8))
    m = tiny_model_config()
    src = Trainer(m, _quick(augment="none"), data, tmp_path / "src")
    src.run()
    ckpt = src.ckpt_dir / "stage-4.pt"
    export = src.export(tmp_path / "export").parent

    # From a training checkpoint: G, G_ema, D (and w_avg) carry over; the schedule starts at 4x4
    # (the source's resolution) and grows on to 8x8 with a fade; images shown start at 0.
    t = tiny_train_config(max_resolution=8, start_resolution=4, init_from=str(ckpt), stab_kimg=0.008, fade_kimg=0.008,
                   snapshot_kimg=1.0, grid_seeds=[0])
    ft = Trainer(m, t, data, tmp_path / "ft")
    assert ft.kimg == 0 and ft.D_from_source and [s.resolution for s in ft.stages] == [4, 8]
    for name in ("G", "G_ema", "D"):
        _same_weights(getattr(src, name), getattr(ft, name))
    assert torch.equal(ft.G.mapping.w_avg, src.G.mapping.w_avg) and ft.G.mapping.w_avg.abs().sum() > 0
    ft.run()
    assert ft.kimg == pytest.approx(0.024) and ft.stage_done(8)
    meta = ft.export(tmp_path / "ft-export")
    assert meta.name == "generator.safetensors"

    # From an export (G_ema only): G and G_ema start from it, D is fresh; a source at 4x4 with a
    # config whose start_resolution is 8 still starts at 4 (the source's resolution).
    t2 = replace(t, init_from=str(export), start_resolution=8)
    ft2 = Trainer(m, t2, data, tmp_path / "ft2")
    assert not ft2.D_from_source and ft2.stages[0].resolution == 4
    _same_weights(src.G_ema, ft2.G_ema)
    assert torch.equal(ft2.G.synthesis.b4.conv1.weight, src.G_ema.synthesis.b4.conv1.weight)
    assert not torch.equal(ft2.D.b4.fromrgb.conv.weight, src.D.b4.fromrgb.conv.weight)  # D starts fresh

    # The run key follows the source's bytes, not its path.
    source = read_init_source(export)
    assert source.kind == "export" and source.resolution == 4 and len(source.sha256) == 64
    h1 = params_hash(m, t2, source.sha256)
    assert h1 != params_hash(m, t2, "0" * 64)
    assert h1 == params_hash(m, replace(t2, init_from="/elsewhere"), source.sha256)


def test_finetune_errors_are_clear(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data", (4, 8))
    src = Trainer(tiny_model_config(), _quick(augment="none"), data, tmp_path / "src")
    src.run()
    export = src.export(tmp_path / "export").parent
    other = replace(tiny_model_config(), w_dim=8)
    with pytest.raises(CheckpointError, match=r"another architecture.*w_dim: source 16, config 8"):
        Trainer(other, tiny_train_config(init_from=str(export)), data, tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match=r"init_from .* does not exist"):
        Trainer(tiny_model_config(), tiny_train_config(init_from=str(tmp_path / "missing")), data, tmp_path / "bad2")
    from stylegan.config import ConfigError, TrainConfig, from_dict

    with pytest.raises(ConfigError, match="registry URI, which only the train flow resolves"):
        from_dict(TrainConfig, {"init_from": "models:/pokemon-stylegan@champion"}, "train")
