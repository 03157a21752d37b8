from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylegan.checkpoint import CheckpointError, load_checkpoint
from stylegan.sampling import generate
from stylegan.training import Trainer, resolve_device
from tests.helpers import TOY_COLOUR as COLOUR
from tests.helpers import assert_same_training_state as _assert_same_state
from tests.helpers import tiny_model_config as tiny_model
from tests.helpers import tiny_train_config as tiny_train
from tests.helpers import write_noise_data, write_toy_data


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "data")


@pytest.mark.parametrize(
    "extra",
    [{}, {"r1_interval": 2, "reset_optimizer_at_growth": True, "loss": "logistic"}, {"loss": "wgan-gp"}],
    ids=["default", "lazy-r1-reset-opt", "wgan-gp"],
)
def test_resume_is_exact_across_a_stage_boundary(data: Path, tmp_path: Path, extra: dict[str, Any]) -> None:
    m, t = tiny_model(), tiny_train(**extra)
    straight = Trainer(m, t, data, tmp_path / "straight")
    straight.run()
    assert straight.step == 12 and straight.kimg == pytest.approx(0.048)

    first = Trainer(m, t, data, tmp_path / "split")
    first.run(max_steps=5)  # stage 4 ends after 4 steps; step 5 is inside the 8x8 fade-in
    assert first.step == 5 and first.phase.resolution == 8 and 0 < first.phase.alpha < 1
    del first
    torch.manual_seed(1234)  # disturb every global RNG: the resumed run must not depend on them
    np.random.seed(1234)
    resumed = Trainer(m, t, data, tmp_path / "split")
    assert resumed.resumed_from is not None and resumed.step == 5
    resumed.run()
    _assert_same_state(straight, resumed)


def test_short_run_learns_the_data_colour(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data")
    m = tiny_model()
    t = tiny_train(fade_kimg=0.1, stab_kimg=0.4, batch_size=8, lr=0.005, ema_kimg=0.01, snapshot_kimg=100)
    trainer = Trainer(m, t, data, tmp_path / "run")

    def colour_distance() -> float:
        p = trainer.phase
        imgs = generate(trainer.G_ema, seeds=range(16), resolution=p.resolution, alpha=p.alpha).astype(np.float64)
        return float(np.abs(imgs.mean(axis=(1, 2)) - COLOUR).mean())

    before = colour_distance()
    trainer.run(max_steps=200)
    after = colour_distance()
    assert trainer.phase.resolution == 8  # it grew and kept learning at the new resolution
    # Seeds 0-3 give ratios 0.24-0.51 (the same spread before and after the device-side random
    # streams of issue 10), so the bound leaves room for the seed, not for a trainer that stalls.
    assert after < 0.6 * before, f"mean colour distance {before:.1f} -> {after:.1f}"


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.snapshots: list[tuple[int, float, Any, Path]] = []
        self.stage_ends: list[Any] = []

    def on_tick(self, stats: dict[str, Any]) -> None:
        self.ticks.append(stats)

    def on_snapshot(self, resolution: int, kimg: float, grid: Any, path: Path) -> None:
        self.snapshots.append((resolution, kimg, grid, path))

    def on_stage_end(self, result: Any) -> None:
        self.stage_ends.append(result)


def test_stages_callbacks_checkpoints_and_snapshots(data: Path, tmp_path: Path) -> None:
    rec = Recorder()
    m, t = tiny_model(), tiny_train()
    trainer = Trainer(m, t, data, tmp_path / "run", callbacks=[rec])
    assert not trainer.stage_done(4)
    r4 = trainer.run_stage(4)
    assert trainer.stage_done(4) and not trainer.stage_done(8)
    assert r4.resolution == 4 and r4.kimg == pytest.approx(0.016) and r4.checkpoint.name == "stage-4.pt"
    r8 = trainer.run_stage(8)
    assert r8.checkpoint.name == "stage-8.pt" and trainer.stage_done(8)
    # Already done: skipped, no steps taken.
    steps = trainer.step
    again = trainer.run_stage(8)
    assert trainer.step == steps and again.seconds == 0.0

    keys = {"kimg", "resolution", "alpha", "lr", "batch_size", "loss_G", "loss_D", "r1", "images_per_sec",
            "sec_per_tick", "stage"}
    assert rec.ticks and all(keys <= set(s) for s in rec.ticks)
    assert rec.ticks[0]["resolution"] == 4 and rec.ticks[-1]["resolution"] == 8
    assert any(0 < s["alpha"] < 1 for s in rec.ticks)  # the fade-in was reported
    assert all(np.isfinite(s["loss_G"]) and np.isfinite(s["loss_D"]) for s in rec.ticks)
    assert [r.resolution for r in rec.stage_ends] == [4, 8]
    assert all(r.seconds > 0 for r in rec.stage_ends)
    res, kimg, grid, path = rec.snapshots[-1]
    assert kimg == pytest.approx(0.048)
    assert res == 8 and path.exists() and path.parent == tmp_path / "run" / "snapshots"
    assert grid.size[0] % 8 == 0 and grid.size[1] % 8 == 0  # 8x8 tiles

    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "stage-4.pt" in ckpts and "stage-8.pt" in ckpts
    assert len([c for c in ckpts if c.startswith("ckpt-")]) == 2  # keep_checkpoints
    assert not [c for c in ckpts if c.endswith(".tmp")]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage-4.pt")
    assert state["cur_nimg"] == 16 and state["stage"] == 1  # the schedule has moved on to 8x8
    assert state["model_config"]["z_dim"] == 16 and "mapping.w_avg" in state["G"]
    assert state["params_hash"] == trainer.params_hash
    # w_avg is tracked during training (it starts at zero).
    assert trainer.G.mapping.w_avg.abs().sum() > 0
    assert torch.equal(trainer.G_ema.mapping.w_avg, trainer.G.mapping.w_avg)


def test_ema_half_life(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_model(), tiny_train(ema_kimg=0.004), data, tmp_path / "run")
    p_ema_before = trainer.G_ema.synthesis.b4.conv1.weight.clone()
    trainer.run(max_steps=1)
    p = trainer.G.synthesis.b4.conv1.weight
    beta = 0.5 ** (4 / 4.0)  # batch 4, half-life 4 images
    assert torch.allclose(trainer.G_ema.synthesis.b4.conv1.weight, p.lerp(p_ema_before, beta))

    # Ramp-up: the half-life is capped at ema_rampup * images shown (0 at the first step: a copy).
    ramped = Trainer(tiny_model(), tiny_train(ema_kimg=10.0, ema_rampup=0.5), data, tmp_path / "ramped")
    ramped.run(max_steps=1)
    assert torch.equal(ramped.G_ema.synthesis.b4.conv1.weight, ramped.G.synthesis.b4.conv1.weight)
    before = ramped.G_ema.synthesis.b4.conv1.weight.clone()
    ramped.run(max_steps=1)  # now 4 images shown: half-life min(10000, 2) images, batch 4 -> beta 1/4
    p = ramped.G.synthesis.b4.conv1.weight
    assert torch.allclose(ramped.G_ema.synthesis.b4.conv1.weight, p.lerp(before, 0.25))


def test_params_change_refuses_to_resume(data: Path, tmp_path: Path) -> None:
    Trainer(tiny_model(), tiny_train(), data, tmp_path / "run").run(max_steps=1)
    # Bookkeeping settings may change ...
    Trainer(tiny_model(), tiny_train(tick_kimg=1.0, keep_checkpoints=5), data, tmp_path / "run")
    # ... what the run computes may not.
    with pytest.raises(CheckpointError, match="different model/train params"):
        Trainer(tiny_model(), tiny_train(lr=0.01), data, tmp_path / "run")


def test_checkpoint_that_no_longer_fits_the_networks_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    from stylegan.checkpoint import save_checkpoint

    Trainer(tiny_model(), tiny_train(), data, tmp_path / "run").run(max_steps=1)
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("ckpt-*.pt")
    state = load_checkpoint(ckpt)
    # Same params hash, but a tensor shaped as older network code built it.
    key = next(k for k in state["G"] if k.endswith("weight"))
    state["G"][key] = torch.zeros(*state["G"][key].shape, 2)
    save_checkpoint(ckpt, state)
    with pytest.raises(CheckpointError, match="does not fit the networks this code builds"):
        Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")


def test_unreadable_checkpoints(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")
    trainer.run(max_steps=1)
    trainer.run(max_steps=1)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 2
    ckpts[-1].write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint"):
        older = Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")
    assert older.step == 1
    ckpts[0].write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")


def test_missing_data_resolution_is_a_clear_error(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data", resolutions=(4,))
    with pytest.raises(FileNotFoundError, match=r"resolution\(s\) \[8\]"):
        Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")


def test_mirror_flips_come_from_the_trainer_rng(tmp_path: Path) -> None:
    # Left half red, right half blue: a flip swaps them, so the batch shows both layouts.
    root = tmp_path / "data"
    root.mkdir()
    for r in (4, 8):
        a = np.zeros((8, 3, r, r), np.uint8)
        a[:, 0, :, : r // 2] = 255
        a[:, 2, :, r // 2 :] = 255
        np.save(root / f"images_{r}.npy", a)
    trainer = Trainer(tiny_model(), tiny_train(batch_size=16), root, tmp_path / "run")
    reals = trainer.batches.reals(trainer.phase)
    red_left = (reals[:, 0, :, 0] > 0).all(dim=1)
    assert 0 < int(red_left.sum()) < 16
    no_mirror = Trainer(tiny_model(), tiny_train(batch_size=16, mirror=False), root, tmp_path / "run2")
    assert bool((no_mirror.batches.reals(no_mirror.phase)[:, 0, :, 0] > 0).all())


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_export_from_trainer_is_trimmed_to_the_trained_resolution(data: Path, tmp_path: Path) -> None:
    from stylegan.checkpoint import load_generator

    trainer = Trainer(tiny_model(), tiny_train(), data, tmp_path / "run")
    trainer.run_stage(4)
    trainer.export(tmp_path / "export")  # only 4x4 is fully trained
    G = load_generator(tmp_path / "export")
    assert G.img_resolution == 4
    ours = generate(trainer.G_ema, seeds=[0, 1], resolution=4)
    assert np.array_equal(generate(G, seeds=[0, 1]), ours)


def test_channels_last_option_trains(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_model(), tiny_train(channels_last=True, amp=True), data, tmp_path / "run")
    assert trainer.D.b8.conv0.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.amp_dtype is None  # amp never applies on CPU
    before = trainer.G.synthesis.b4.conv1.weight.clone()
    stats = trainer.train_step()
    assert all(torch.isfinite(v) for v in stats.values())
    assert not torch.equal(before, trainer.G.synthesis.b4.conv1.weight)


def test_lazy_r1_ticks_average_the_penalty_over_the_steps_that_compute_it(data: Path, tmp_path: Path) -> None:
    rec = Recorder()
    trainer = Trainer(tiny_model(), tiny_train(r1_interval=2, tick_kimg=0.016), data, tmp_path / "run", callbacks=[rec])
    step_r1: list[float] = []
    plain_step = trainer.train_step

    def recording_step(phase: Any = None) -> dict[str, torch.Tensor]:
        stats = plain_step(phase)
        step_r1.append(float(stats["r1"]))
        return stats

    trainer.train_step = recording_step  # type: ignore[method-assign]
    trainer.run(max_steps=4)  # one tick of 4 steps; R1 on steps 0 and 2 only
    assert len(step_r1) == 4 and step_r1[1] == step_r1[3] == 0.0 and step_r1[0] > 0 and step_r1[2] > 0
    assert rec.ticks[0]["r1"] == pytest.approx((step_r1[0] + step_r1[2]) / 2)  # not diluted by the skipped steps


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_at_growth(data: Path, tmp_path: Path, reset: bool) -> None:
    trainer = Trainer(tiny_model(), tiny_train(reset_optimizer_at_growth=reset), data, tmp_path / "run")
    trainer.run_stage(4)
    steps_at_4 = trainer.step
    trainer.train_step()  # the first step of the 8x8 stage
    assert trainer.cur_resolution == 8
    for opt in (trainer.opt_G, trainer.opt_D):
        adam_steps = max(float(s["step"]) for s in opt.state_dict()["state"].values())
        # Reset: Adam starts over at growth; kept: the 4x4 layers' moments carry on.
        assert adam_steps == (1.0 if reset else steps_at_4 + 1)


def test_lazy_r1_is_added_to_the_d_loss_scaled_by_gamma_and_interval(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylegan.training import losses

    base: list[float] = []
    penalties: list[float] = []
    plain_d, plain_r1 = losses.logistic_d_loss, losses.r1_penalty

    def d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        out = plain_d(real, fake)
        base.append(float(out.detach()))
        return out

    def r1(logits: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
        out = plain_r1(logits, reals)
        penalties.append(float(out.detach()))
        return out

    monkeypatch.setattr(losses, "logistic_d_loss", d_loss)
    monkeypatch.setattr(losses, "r1_penalty", r1)
    trainer = Trainer(tiny_model(), tiny_train(r1_interval=3, r1_gamma=5.0), data, tmp_path / "run")
    reported = [float(trainer.train_step()["loss_D"]) for _ in range(4)]
    assert len(penalties) == 2  # steps 0 and 3 only
    assert reported[0] == pytest.approx(base[0] + penalties[0] * 5.0 / 2 * 3, rel=1e-5)
    assert reported[1] == pytest.approx(base[1], rel=1e-6) and reported[2] == pytest.approx(base[2], rel=1e-6)
    assert reported[3] == pytest.approx(base[3] + penalties[1] * 5.0 / 2 * 3, rel=1e-5)


def test_reals_fade_in_like_the_generator_output(tmp_path: Path) -> None:
    from dataclasses import replace

    from stylegan.training.layers import downsample2x, upsample2x

    root = write_noise_data(tmp_path / "data", n=16)
    trainer = Trainer(tiny_model(), tiny_train(), root, tmp_path / "run")
    trainer.run_stage(4)
    phase = trainer.phase
    assert phase.resolution == 8 and phase.alpha < 1.0
    state = trainer.rng.index_gen.get_state(), trainer.rng.device_gen.get_state()
    sharp = trainer.batches.reals(replace(phase, alpha=1.0))
    for alpha in (0.0, 0.3):
        trainer.rng.index_gen.set_state(state[0])  # the same images ...
        trainer.rng.device_gen.set_state(state[1])  # ... and flips
        faded = trainer.batches.reals(replace(phase, alpha=alpha))
        expected = torch.lerp(upsample2x(downsample2x(sharp)), sharp, alpha)
        assert torch.allclose(faded, expected, atol=1e-6)
    assert not torch.allclose(faded, sharp, atol=1e-2)  # the blend changes random data
