"""The progressive schedule, as pure functions of images shown (kimg), never of iterations.

Stage i trains resolution ``start_resolution * 2**i``: it first fades the new resolution in
over ``fade_kimg`` (alpha 0 -> 1, linear; the first stage has nothing to fade from), then
stabilises for ``stab_kimg``. The last stage also gets ``final_kimg``. Counting images
rather than steps keeps the schedule the same whatever the batch size, and makes a resumed
run land exactly where the interrupted one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from stylegan.config import ConfigError, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Stage:
    index: int  # 0 for the first (start_resolution) stage
    resolution: int
    start_kimg: float  # images shown when the stage begins
    fade_kimg: float  # 0 for the first stage
    stab_kimg: float  # includes final_kimg for the last stage
    end_kimg: float  # start_kimg + fade_kimg + stab_kimg


@dataclass(frozen=True)
class Phase:
    stage: Stage
    resolution: int
    alpha: float  # fade-in of the stage's resolution: 0 = all previous resolution, 1 = all new
    batch_size: int
    lr: float


def top_resolution(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int:
    """The highest resolution the schedule reaches (``train.max_resolution`` or the model's)."""
    top = train_cfg.max_resolution or model_cfg.max_resolution
    if top > model_cfg.max_resolution:
        raise ConfigError(
            f"train.max_resolution ({top}) exceeds model.max_resolution ({model_cfg.max_resolution}); "
            "build the model for that resolution or lower train.max_resolution"
        )
    if train_cfg.start_resolution > top:
        raise ConfigError(f"train.start_resolution ({train_cfg.start_resolution}) exceeds the top resolution ({top})")
    return top


def stages(train_cfg: TrainConfig, model_cfg: ModelConfig) -> list[Stage]:
    """Every stage of the run, in order, with its kimg boundaries."""
    top = top_resolution(train_cfg, model_cfg)
    out: list[Stage] = []
    res, start = train_cfg.start_resolution, 0.0
    while res <= top:
        fade = 0.0 if not out else float(train_cfg.fade_kimg)
        stab = float(train_cfg.stab_kimg) + (float(train_cfg.final_kimg) if res == top else 0.0)
        out.append(Stage(len(out), res, start, fade, stab, start + fade + stab))
        start += fade + stab
        res *= 2
    return out


def total_kimg(train_cfg: TrainConfig, model_cfg: ModelConfig) -> float:
    return stages(train_cfg, model_cfg)[-1].end_kimg


def stage_for(train_cfg: TrainConfig, model_cfg: ModelConfig, resolution: int) -> Stage:
    """The stage that trains ``resolution``; a clear error when the schedule never reaches it."""
    all_stages = stages(train_cfg, model_cfg)
    for s in all_stages:
        if s.resolution == resolution:
            return s
    raise ConfigError(
        f"resolution {resolution} is not a stage of this schedule; stages are {[s.resolution for s in all_stages]}"
    )


def phase_at(train_cfg: TrainConfig, model_cfg: ModelConfig, kimg: float) -> Phase:
    """Resolution, fade-in alpha, batch size and learning rate after ``kimg`` thousand images.

    A stage covers ``[start_kimg, end_kimg)``; past the end of the schedule the last stage holds.
    """
    if kimg < 0:
        raise ValueError(f"kimg must be >= 0, got {kimg}")
    all_stages = stages(train_cfg, model_cfg)
    stage = next((s for s in all_stages if kimg < s.end_kimg), all_stages[-1])
    fading = stage.fade_kimg > 0
    alpha = min(max((kimg - stage.start_kimg) / stage.fade_kimg, 0.0), 1.0) if fading else 1.0
    res = stage.resolution
    return Phase(stage, res, float(alpha), train_cfg.batch_size_at(res), train_cfg.lr_at(res))
