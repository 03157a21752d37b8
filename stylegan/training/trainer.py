"""The trainer: progressive growing one stage (resolution) at a time, G_ema, exact resume.

The Trainer orchestrates; the rest lives beside it: the state and RNG streams a checkpoint
carries (``train_state``: a run resumed by a new ``Trainer`` on the same ``run_dir`` continues
bit for bit on CPU), real batches (``batches``), Adam, the gradient step over ranks and G_ema
(``optim``), the tick meter and snapshots (``ticks``) and the loss (``losses``).

A step never waits for the device: losses stay device tensors (summed on the device, read
once per tick), random draws happen on the device, the next real batch is gathered in the
background (``training/prefetch.py``), and a compiled graph reads alpha from a device tensor.
Trackers are reached only through callbacks; only rank 0 saves files or reports.

Several processes (torchrun; ``stylegan.training.distributed``) train as one: each draws the whole
global batch from the same seeded streams and computes its share of the rows (whole
minibatch-stddev groups), gradients are averaged with one flattened all-reduce per network,
and G's ``w_avg`` rides along. N processes therefore compute what one process computes with
the same global batch (up to float summation order); a checkpoint carries nothing that
depends on the number of processes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from stylegan.checkpoint import export_generator, params_hash, remove_stale_temp_files, stage_name
from stylegan.config import ModelConfig, TrainConfig
from stylegan.sampling import save_png
from stylegan.shared import StageResult  # shared: distributed builds and logs them too
from stylegan.training import augment, distributed, losses, optim, train_state, transfer
from stylegan.training.batches import RankRows, RealBatches, check_data, check_sharding
from stylegan.training.device import amp_dtype, compile_forward, resolve_device
from stylegan.training.networks import Generator
from stylegan.training.projected import build_discriminator
from stylegan.training.schedule import Phase, Stage, phase_at, stage_for, stages
from stylegan.training.ticks import TickMeter, snapshot_grid

__all__ = ["Trainer"]


class Trainer:
    """Trains G and D over the progressive schedule of ``train_cfg``; resumes from ``run_dir``."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data_root: str | Path,  # folder with images_<R>.npy for every resolution of the schedule
        run_dir: str | Path,  # checkpoints/ and snapshots/ go here; an existing run resumes
        *,
        device: str = "auto",  # "auto" defers to train_cfg.device ("auto" there = CUDA if present)
        rank: int = 0,  # this process's rank; only rank 0 writes files and calls callbacks
        world_size: int = 1,  # processes sharing each batch (needs torch.distributed initialised)
        callbacks: Iterable[Any] = (),  # objects with on_tick / on_snapshot / on_stage_end
    ) -> None:
        self.model_cfg = model_cfg
        self.data_root = Path(data_root)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.snapshot_dir = self.run_dir / "snapshots"
        self.rank = rank
        self.world_size = world_size
        self.callbacks = list(callbacks)
        self.device = resolve_device(train_cfg.device if device == "auto" else device)
        # Fine-tuning starts the schedule at the source's resolution (stylegan/training/transfer.py).
        self.train_cfg, self.init_source = transfer.effective_train_config(train_cfg, model_cfg)
        train_cfg = self.train_cfg
        self.stages: list[Stage] = stages(train_cfg, model_cfg)
        self.params_hash = params_hash(model_cfg, train_cfg, self.init_source and self.init_source.sha256)
        check_sharding(self.stages, train_cfg, model_cfg, world_size, rank)
        check_data(self.data_root, self.stages)

        # Fresh-run randomness (global RNGs seeded here, before G's init draws from them); a resumed
        # run overwrites all of it from the checkpoint.
        self.rng = train_state.RngStreams(train_cfg.seed, self.device)
        self.G = Generator(model_cfg).to(self.device)
        self.D = build_discriminator(model_cfg).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.D_from_source = False
        if self.init_source is not None:  # a resumed run overwrites these with its own checkpoint below
            self.D_from_source = transfer.apply_init(self.init_source, G=self.G, G_ema=self.G_ema, D=self.D)
        if train_cfg.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        self.opt_G = optim.make_optimizer(self.G, train_cfg, self.device)
        self.opt_D = optim.make_optimizer(self.D, train_cfg, self.device)
        # torch.compile wraps the forward passes; state dicts stay those of the plain modules.
        # R1 / GP need double backward, which compiled graphs lack, so those passes use plain D.
        self._G_fwd = compile_forward(self.G, train_cfg.compile)
        self._D_fwd = compile_forward(self.D, train_cfg.compile)
        # Compiled graphs read alpha from this tensor (a Python float would be baked into the
        # graph and recompiled at every value of a fade-in); updated in place, no new host tensor.
        self._alpha = torch.ones((), device=self.device)
        self.amp_dtype = amp_dtype(train_cfg.amp, self.device)
        # fp16 needs loss scaling (one scaler per network: their gradients differ in scale);
        # disabled scalers (bf16, fp32) pass losses and steps through unchanged.
        fp16 = self.amp_dtype == torch.float16
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.rank_rows = RankRows(world_size, rank, model_cfg.mbstd_group_size, self.device)
        self.batches = RealBatches(self.data_root, model_cfg, train_cfg, self.device, self.rng.index_gen,
                                   self.rng.device_gen, self.rank_rows)
        # The loss augments what D sees (reals, fakes, the R1 pass) with these; ada tunes p. Kept here
        # as training state: the checkpoint carries ada and aug_gen, ticks report p.
        self.augment_pipe, self.ada = augment.from_train_config(train_cfg, self.device)
        # train.loss's phases (stylegan/training/losses.py): G/D forwards, penalties, augmentation, autocast.
        self.loss = losses.build_loss(
            train_cfg, G_fwd=self._G_fwd, D=self.D, D_fwd=self._D_fwd, device=self.device,
            amp_dtype=self.amp_dtype, mixing_prob=model_cfg.style_mixing_prob, augment_pipe=self.augment_pipe,
            ada=self.ada, aug_gen=self.rng.aug_gen, gen=self.rng.device_gen, world_size=world_size,
            rows=lambda B: self.rank_rows(B, on_device=True))
        self.ticks = TickMeter(train_cfg.tick_kimg, world_size, self._notify)

        self.cur_nimg = 0  # images shown so far (all ranks together)
        self.step = 0  # training steps (one D + one G update each) so far
        self.cur_resolution: int | None = None  # resolution of the last step (growth detection)
        self._r1_applied = False  # whether the last train_step computed the R1 / GP penalty
        self.resumed_from: Path | None = None
        if self.rank == 0 and self.ckpt_dir.exists():
            remove_stale_temp_files(self.ckpt_dir)
        train_state.resume(self)
        if world_size > 1:
            # Every rank read the same checkpoint (or none); make sure, then start bitwise equal.
            distributed.check_same_across_ranks([self.cur_nimg, self.step], "the images shown and step resumed from",
                                                self.device)
            distributed.broadcast_state([self.G, self.D, self.G_ema])

    # -- public ------------------------------------------------------------------------------

    @property
    def kimg(self) -> float:
        return self.cur_nimg / 1000.0

    @property
    def phase(self) -> Phase:
        return phase_at(self.train_cfg, self.model_cfg, self.kimg)

    def stage_done(self, resolution: int) -> bool:
        return self._finished(stage_for(self.train_cfg, self.model_cfg, resolution))

    def run_stage(self, resolution: int, max_steps: int | None = None) -> StageResult:
        """Train from wherever the run is to the end of the stage at ``resolution``.

        Earlier unfinished stages are trained first. With ``max_steps`` it may stop early
        (after saving a checkpoint); the result's ``checkpoint`` is then the rolling one.
        """
        stage = stage_for(self.train_cfg, self.model_cfg, resolution)
        if self._finished(stage):
            return StageResult(resolution, self.kimg, self._stage_path(resolution), 0.0)
        t0 = time.perf_counter()
        last = self._train_until(lambda: self._finished(stage), max_steps)
        path = self._stage_path(resolution) if self._finished(stage) else last
        return StageResult(resolution, self.kimg, path, time.perf_counter() - t0)

    def run(self, max_steps: int | None = None) -> list[StageResult]:
        """Train every remaining stage (or ``max_steps`` steps, then save and stop)."""
        results = []
        steps_left = max_steps
        for s in self.stages:
            if self._finished(s):
                continue
            before = self.step
            results.append(self.run_stage(s.resolution, steps_left))
            if steps_left is not None:
                steps_left -= self.step - before
                if steps_left <= 0:
                    break
        return results

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Export G_ema for the highest fully trained resolution (or the current one)."""
        res = train_state.export_resolution(self.stages, self.model_cfg, self.train_cfg, self.kimg)
        meta = train_state.export_metadata(self.kimg, self.params_hash, self.init_source, metadata)
        return export_generator(self.G_ema, out_dir, res, meta)

    def save(self) -> Path | None:
        """Write a rolling checkpoint (rank 0) and prune old ones; returns its path."""
        return train_state.save(self)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint written now holds (``stylegan.training.train_state``)."""
        return train_state.checkpoint_state(self)

    def close(self) -> None:
        """Stop the prefetch worker (also done when the trainer is garbage collected)."""
        self.batches.close()

    # -- setup -------------------------------------------------------------------------------

    def _stage_path(self, resolution: int) -> Path | None:
        return self.ckpt_dir / stage_name(resolution) if self.rank == 0 else None

    # -- the training loop -------------------------------------------------------------------

    def _finished(self, stage: Stage) -> bool:
        # Same float expression as phase_at, so "finished" and "the schedule moved on" agree.
        return self.kimg >= stage.end_kimg

    def _train_until(self, done: Callable[[], bool], max_steps: int | None) -> Path | None:
        """Step until ``done()``; handles ticks, snapshots and stage ends. Returns the last checkpoint."""
        t = self.train_cfg
        last: Path | None = None
        steps = 0
        self.ticks.start(self.cur_nimg)
        clock: tuple[int, float] = (-1, 0.0)  # (stage index, when this call started training it)
        snap = max(round(t.snapshot_kimg * 1000), 1)
        while not done():
            if max_steps is not None and steps >= max_steps:
                last = self.save()
                break
            phase = self.phase
            if clock[0] != phase.stage.index:
                clock = (phase.stage.index, time.perf_counter())
            stats = self.train_step(phase)
            steps += 1
            self.ticks.accumulate(stats, self._r1_applied)
            if self.ticks.due(self.cur_nimg):
                self.ticks.emit(phase, self.cur_nimg, self.ada)
            crossed_snapshot = self.cur_nimg // snap != (self.cur_nimg - phase.batch_size) // snap
            if self._finished(phase.stage):
                if self.ticks.steps:
                    self.ticks.emit(phase, self.cur_nimg, self.ada)
                last = train_state.save_stage(self, phase.resolution)
                self._snapshot(phase)
                result = StageResult(phase.resolution, self.kimg, last, time.perf_counter() - clock[1])
                self._notify("on_stage_end", result)
            elif crossed_snapshot and t.snapshot_kimg > 0:
                last = self.save()
                self._snapshot(phase)
        return last

    def _enter_stage(self, phase: Phase) -> None:
        if self.cur_resolution is not None and self.train_cfg.reset_optimizer_at_growth:
            self.opt_G = optim.make_optimizer(self.G, self.train_cfg, self.device)
            self.opt_D = optim.make_optimizer(self.D, self.train_cfg, self.device)
        self.cur_resolution = phase.resolution

    def _latents(self, n: int) -> torch.Tensor:
        B = n * self.world_size
        z = torch.randn(B, self.model_cfg.z_dim, generator=self.rng.device_gen, device=self.device)
        return z[self.rank_rows(B, on_device=True)]

    def train_step(self, phase: Phase | None = None) -> dict[str, torch.Tensor]:
        """One D update and one G update at ``phase`` (default: the current one); no reporting or
        checkpointing (``run``/``run_stage`` add those). Returns loss_G, loss_D and r1 as detached
        0-dim tensors on the training device: nothing in a step waits for the device."""
        phase = phase or self.phase
        if phase.resolution != self.cur_resolution:
            self._enter_stage(phase)
        optim.set_lr(self.opt_G, phase.lr)
        optim.set_lr(self.opt_D, phase.lr)
        alpha_in: float | torch.Tensor = phase.alpha
        if self.train_cfg.compile is not False:
            alpha_in = self._alpha.fill_(phase.alpha)  # in place: no new host tensor, no recompile
        at = losses.StepArgs(phase.resolution, phase.alpha, alpha_in, phase.batch_size, self.cur_nimg)
        b = phase.batch_size // self.world_size

        reals = self.batches.reals(phase)
        self.batches.prefetch_next(phase, self.cur_nimg)  # gathered while this step computes
        z = self._latents(b)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        d = self.loss.d_phase(self.step, reals, z, at)
        optim.gradient_step(self.D, self.opt_D, self.scaler_D, d.loss, self.world_size)

        z = self._latents(b)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        loss_G = self.loss.g_phase(z, at)
        optim.gradient_step(self.G, self.opt_G, self.scaler_G, loss_G, self.world_size, extra=[self.G.mapping.w_avg])
        self.D.requires_grad_(True)

        optim.update_ema(self.G_ema, self.G, self.train_cfg, self.cur_nimg, phase.batch_size)
        if self.ada is not None and self.ada.due():
            self.ada.update(self.world_size)  # on the device: no host sync
        self.cur_nimg += phase.batch_size
        self.step += 1
        self._r1_applied = d.regularised  # lazy R1: ticks average r1 over these steps only
        return {"loss_G": loss_G.detach(), "loss_D": d.loss.detach(), "r1": d.penalty.detach()}

    # -- reporting ---------------------------------------------------------------------------

    def _notify(self, name: str, *args: Any) -> None:
        """Call ``name`` on every callback that has it; rank 0 only (the others' stats are the same)."""
        if self.rank != 0:
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _snapshot(self, phase: Phase) -> None:
        if self.rank != 0:
            return
        # Mid-fade only when the snapshot is of the stage being trained now.
        alpha = self.phase.alpha if self.phase.resolution == phase.resolution else 1.0
        grid = snapshot_grid(self.G_ema, self.train_cfg, phase.resolution, alpha, self.device)
        path = save_png(grid, self.snapshot_dir / f"fakes-{self.cur_nimg:09d}-{phase.resolution}.png")
        self._notify("on_snapshot", phase.resolution, self.kimg, grid, path)
