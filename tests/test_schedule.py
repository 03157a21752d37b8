from __future__ import annotations

import pytest

from stylegan.config import PRESETS, ConfigError, ModelConfig, TrainConfig, from_dict
from stylegan.training.schedule import phase_at, stage_for, stages, total_kimg


def _cfgs(**train: object) -> tuple[TrainConfig, ModelConfig]:
    base = {"start_resolution": 8, "fade_kimg": 10, "stab_kimg": 20, "final_kimg": 5}
    base.update(train)
    return from_dict(TrainConfig, base), ModelConfig(max_resolution=32)


def test_stage_boundaries_first_stage_has_no_fade_last_gets_final() -> None:
    t, m = _cfgs()
    s = stages(t, m)
    assert [x.resolution for x in s] == [8, 16, 32]
    assert (s[0].fade_kimg, s[0].stab_kimg, s[0].start_kimg, s[0].end_kimg) == (0, 20, 0, 20)
    assert (s[1].start_kimg, s[1].fade_kimg, s[1].end_kimg) == (20, 10, 50)
    assert (s[2].start_kimg, s[2].stab_kimg, s[2].end_kimg) == (50, 25, 85)
    assert total_kimg(t, m) == 85
    assert stage_for(t, m, 16).index == 1
    with pytest.raises(ConfigError, match="not a stage"):
        stage_for(t, m, 64)


def test_alpha_fades_linearly_and_holds_after_fade() -> None:
    t, m = _cfgs()
    assert phase_at(t, m, 0).resolution == 8 and phase_at(t, m, 0).alpha == 1.0
    assert phase_at(t, m, 19.999).resolution == 8
    p = phase_at(t, m, 20.0)
    assert (p.resolution, p.alpha) == (16, 0.0)
    assert phase_at(t, m, 25.0).alpha == pytest.approx(0.5)
    assert phase_at(t, m, 30.0).alpha == 1.0
    assert phase_at(t, m, 49.0).alpha == 1.0 and phase_at(t, m, 49.0).resolution == 16
    # Past the end of the schedule the last stage holds.
    p = phase_at(t, m, 1000.0)
    assert (p.resolution, p.alpha, p.stage.index) == (32, 1.0, 2)


def test_batch_and_lr_tables_per_resolution() -> None:
    t, m = _cfgs(batch_size=4, batch_sizes={16: 8}, lr=0.001, lrs={32: 0.003})
    assert (phase_at(t, m, 0).batch_size, phase_at(t, m, 0).lr) == (4, 0.001)
    assert phase_at(t, m, 30).batch_size == 8
    assert phase_at(t, m, 60).lr == 0.003 and phase_at(t, m, 60).batch_size == 4


def test_paper_preset_schedule() -> None:
    t = from_dict(TrainConfig, PRESETS["paper"]["train"])
    m = from_dict(ModelConfig, PRESETS["paper"]["model"])
    s = stages(t, m)
    assert [x.resolution for x in s] == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert s[-1].end_kimg == 25_000  # the official total_kimg
    p = phase_at(t, m, 600 + 300)  # halfway through the 16x16 fade-in
    assert (p.resolution, p.alpha, p.batch_size, p.lr) == (16, 0.5, 128, 0.001)
    assert phase_at(t, m, 10_000).batch_size == 32 and phase_at(t, m, 10_000).lr == 0.003
    assert phase_at(t, m, 600 + 3 * 1200 + 900).resolution == 128
    assert phase_at(t, m, 600 + 3 * 1200 + 900).batch_size == 32  # 128x128: minibatch_base of the 8-GPU config


def test_max_resolution_limits_and_validation() -> None:
    t, m = _cfgs(max_resolution=16)
    assert [x.resolution for x in stages(t, m)] == [8, 16]
    assert stages(t, m)[-1].stab_kimg == 25  # final_kimg goes to the last trained stage
    with pytest.raises(ConfigError, match=r"exceeds model\.max_resolution"):
        stages(from_dict(TrainConfig, {"max_resolution": 64}), ModelConfig(max_resolution=32))
    with pytest.raises(ValueError):
        phase_at(t, m, -1)
