"""The trainer: progressive growing one stage (resolution) at a time, G_ema, exact resume.

Everything random that training consumes comes from state the checkpoint carries: the
trainer's host ``torch.Generator`` (batch indices), its generator on the training device
(flips, latents, GP mixing points), and the global torch RNG (noise inputs and style mixing
inside G). A run stopped after any step and resumed by a new ``Trainer`` on the same
``run_dir`` therefore continues bit for bit on CPU.

A step never waits for the device: losses stay device tensors (summed on the device, read
once per tick), random draws happen on the device, the next real batch is gathered in the
background (``data/prefetch.py``), and a compiled graph reads alpha from a device tensor.

Trackers are reached only through callbacks; only rank 0 saves files or reports.

Several processes (torchrun; ``stylegan.distributed``) train as one: each draws the whole
global batch from the same seeded stream and computes its share of the rows (whole
minibatch-stddev groups), gradients are averaged with one flattened all-reduce per network,
and G's ``w_avg`` rides along in G's buffer. N processes therefore compute what one process
computes with the same global batch (up to float summation order), and a checkpoint carries
nothing that depends on the number of processes.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from stylegan import distributed, losses, transfer
from stylegan.augment import AdaController, AugmentPipe
from stylegan.checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    configs_from_checkpoint,
    export_generator,
    hashed_train_params,
    load_checkpoint,
    params_hash,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng_state,
    rolling_checkpoints,
    rolling_name,
    save_checkpoint,
    stage_name,
)
from stylegan.config import ModelConfig, TrainConfig, to_dict
from stylegan.data import PackedDataset, available_resolutions
from stylegan.data.prefetch import BatchPrefetcher
from stylegan.device import amp_dtype, resolve_device
from stylegan.layers import downsample2x, upsample2x
from stylegan.networks import Discriminator, Generator
from stylegan.sampling import generate, image_grid, save_png
from stylegan.schedule import Phase, Stage, phase_at, stage_for, stages
from stylegan.shared import StageResult  # lives there so distributed can build one too


class TrainerCallback(Protocol):
    """What a tracker may implement; every method is optional (looked up with getattr)."""

    def on_tick(self, stats: dict[str, Any]) -> None: ...

    def on_snapshot(self, resolution: int, kimg: float, grid: Image.Image, path: Path) -> None: ...

    def on_stage_end(self, result: StageResult) -> None: ...


__all__ = ["StageResult", "Trainer", "TrainerCallback", "resolve_device"]  # resolve_device: old import path

DEVICE_SEED_OFFSET = 0x5EED  # the device generator starts from train.seed + this
AUG_SEED_OFFSET = 0xA6E  # the augmentation generator: its own stream, not a copy of the latents'
# Buffers that a training step changes: G_ema copies them from G. Every other buffer (the const
# noise maps) never changes, so the EMA does not copy it.
EMA_FOLLOWED_BUFFERS = ("mapping.w_avg",)
COMPILE_RECOMPILE_LIMIT = 64  # graphs per forward: about 2 per stage (grad mode, update_w_avg)


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
        # Fine-tuning starts the schedule at the source's resolution (stylegan/transfer.py).
        self.train_cfg, self.init_source = transfer.effective_train_config(train_cfg, model_cfg)
        train_cfg = self.train_cfg
        self.stages: list[Stage] = stages(train_cfg, model_cfg)
        self.params_hash = params_hash(model_cfg, train_cfg, self.init_source and self.init_source.sha256)
        if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError(f"world_size={world_size} needs torch.distributed initialised before the Trainer")
        for s in self.stages:
            B = train_cfg.batch_size_at(s.resolution)
            if B % world_size:
                raise ValueError(
                    f"batch size {B} at {s.resolution}x{s.resolution} must be divisible by the number of "
                    f"processes ({world_size}); change train.batch_size(s) or --nproc-per-node"
                )
            g = distributed.mbstd_group(B, model_cfg.mbstd_group_size)
            if world_size > 1 and rank == 0 and not distributed.groups_preserved(B, world_size, g):
                warnings.warn(
                    f"batch size {B} at {s.resolution}x{s.resolution} over {world_size} processes leaves "
                    f"{B // world_size} per process, not whole minibatch-stddev groups of {g}: D's groups "
                    "shrink, so the run differs from a single-process one; use a batch that is a multiple "
                    f"of {world_size * g}",
                    stacklevel=2,
                )
        self._check_data()

        # Fresh-run randomness; a resumed run overwrites all of it from the checkpoint.
        seed = train_cfg.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.gen = torch.Generator().manual_seed(seed)  # batch indices (host): the same on every rank
        # Flips, latents and GP mixing points are drawn where they are used (no host->device copy,
        # no sync); the same stream on every rank.
        self.dev_gen = torch.Generator(self.device).manual_seed(seed + DEVICE_SEED_OFFSET)

        self.G = Generator(model_cfg).to(self.device)
        self.D = Discriminator(model_cfg).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.D_from_source = False
        if self.init_source is not None:  # a resumed run overwrites these with its own checkpoint below
            self.D_from_source = transfer.apply_init(self.init_source, G=self.G, G_ema=self.G_ema, D=self.D)
        if train_cfg.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        self.opt_G = self._make_optimizer(self.G)
        self.opt_D = self._make_optimizer(self.D)
        # torch.compile wraps the forward passes; state dicts stay those of the plain modules.
        # R1 / GP need double backward, which compiled graphs lack, so those passes use plain D.
        self._G_fwd = self._compiled(self.G)
        self._D_fwd = self._compiled(self.D)
        # Compiled graphs read alpha from this tensor (a Python float would be baked into the
        # graph and recompiled at every value of a fade-in); updated in place, no new host tensor.
        self._alpha = torch.ones((), device=self.device)
        self.amp_dtype = amp_dtype(train_cfg.amp, self.device)
        # fp16 needs loss scaling (one scaler per network: their gradients differ in scale);
        # disabled scalers (bf16, fp32) pass losses and steps through unchanged.
        fp16 = self.amp_dtype == torch.float16
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self._prefetcher = BatchPrefetcher(device=self.device) if train_cfg.prefetch else None
        self._pending_gen_state: torch.Tensor | None = None  # index stream before the prefetched batch
        # The loss augments what D sees (reals, fakes, the R1 pass) with these; ada tunes p. Kept here
        # as training state: the checkpoint carries ada and aug_gen, ticks report p.
        self.augment_pipe: AugmentPipe | None = None
        self.ada: AdaController | None = None
        if train_cfg.augment != "none":
            self.augment_pipe = AugmentPipe(ops=train_cfg.augment_ops)
            self.ada = AdaController(target=train_cfg.ada_target, speed_kimg=train_cfg.ada_kimg,
                                     interval=train_cfg.ada_interval, p=train_cfg.augment_p,
                                     adjust=train_cfg.augment == "ada", device=self.device)
        # Its own stream on the device, the same on every rank: each draws for the global batch
        # and keeps its rows, so N processes augment as one does.
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + AUG_SEED_OFFSET)
        # train.loss's phases (stylegan/losses.py): G/D forwards, penalties, augmentation, autocast.
        self.loss = losses.build_loss(
            train_cfg, G_fwd=self._G_fwd, D=self.D, D_fwd=self._D_fwd, device=self.device,
            amp_dtype=self.amp_dtype, mixing_prob=model_cfg.style_mixing_prob, augment_pipe=self.augment_pipe,
            ada=self.ada, aug_gen=self.aug_gen, gen=self.dev_gen, world_size=world_size,
            rows=functools.partial(self._rows, on_device=True))

        self.cur_nimg = 0  # images shown so far (all ranks together)
        self.step = 0  # training steps (one D + one G update each) so far
        self.cur_resolution: int | None = None  # resolution of the last step (growth detection)
        self._dataset: PackedDataset | None = None
        self._tick: dict[str, Any] = {}
        self._r1_applied = False  # whether the last train_step computed the R1 / GP penalty
        self.resumed_from: Path | None = None
        self._shards: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch -> this rank's rows (CPU, device)
        if self.rank == 0 and self.ckpt_dir.exists():
            remove_stale_temp_files(self.ckpt_dir)
        self._resume()
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
        done = [s.resolution for s in self.stages if self._finished(s)]
        res = done[-1] if done else self.phase.resolution
        meta = {"kimg": self.kimg, "params_hash": self.params_hash, **(metadata or {})}
        if self.init_source is not None:  # lineage: which weights this run was fine-tuned from
            meta["init_from"] = {"sha256": self.init_source.sha256, "kind": self.init_source.kind,
                                 "resolution": self.init_source.resolution}
        return export_generator(self.G_ema, out_dir, res, meta)

    # -- setup -------------------------------------------------------------------------------

    def _check_data(self) -> None:
        have = available_resolutions(self.data_root)
        missing = [s.resolution for s in self.stages if s.resolution not in have]
        if missing:
            raise FileNotFoundError(
                f"training data for resolution(s) {missing} is missing under {self.data_root} "
                f"(found {have or 'no images_<R>.npy files'}); prepare the data up to "
                f"{self.stages[-1].resolution} (data.max_resolution) or lower train.max_resolution"
            )

    def _make_optimizer(self, net: torch.nn.Module) -> torch.optim.Adam:
        # The mapping network's 0.01 learning-rate multiplier lives in its layers (equalized lr);
        # the noise strengths' multiplier (train.noise_lr_mul) rides in their param group as lr_mul.
        # On CUDA the fused Adam: one kernel, step counters on the device, and GradScaler hands
        # it the scale without a host read. Elsewhere torch's default (foreach) implementation.
        t = self.train_cfg
        fused = True if self.device.type == "cuda" else None
        noise = [p for n, p in net.named_parameters() if ".noise" in n and n.endswith(".weight")]
        rest = [p for n, p in net.named_parameters() if not (".noise" in n and n.endswith(".weight"))]
        groups = [{"params": rest, "lr_mul": 1.0}]
        if noise:
            groups.append({"params": noise, "lr_mul": t.noise_lr_mul})
        return torch.optim.Adam(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, fused=fused)

    def _compiled(self, net: torch.nn.Module) -> torch.nn.Module:
        c = self.train_cfg.compile
        if c is False:
            return net
        import torch._dynamo

        # Each stage (resolution, batch size) and grad mode is its own graph; the default limit (8)
        # would silently fall back to eager after a few stages.
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, COMPILE_RECOMPILE_LIMIT)
        # dynamic=False: shapes change only at stage boundaries, where a specialised graph is best.
        return torch.compile(net, backend="inductor" if c is True else c, dynamic=False)

    def close(self) -> None:
        """Stop the prefetch worker (also done when the trainer is garbage collected)."""
        if self._prefetcher is not None:
            self._rewind_pending()
            self._prefetcher.close()

    # -- checkpoints -------------------------------------------------------------------------

    def _stage_path(self, resolution: int) -> Path | None:
        return self.ckpt_dir / stage_name(resolution) if self.rank == 0 else None

    def _state(self) -> dict[str, Any]:
        return {
            "model_config": to_dict(self.model_cfg),
            "train_config": to_dict(self.train_cfg),
            "params_hash": self.params_hash,
            "G": self.G.state_dict(),  # includes mapping.w_avg
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "cur_nimg": self.cur_nimg,
            "kimg": self.kimg,
            "step": self.step,
            "cur_resolution": self.cur_resolution or 0,
            "stage": self.phase.stage.index,
            "alpha": self.phase.alpha,
            "rng": self._rng_state(),
            "rng_device": {"device": self.device.type, "state": self.dev_gen.get_state()},
            **{f"scaler_{n}": sc.state_dict() for n, sc in self._scalers() if sc.is_enabled()},  # fp16 only
            "augment": {"ada": self.ada.state_dict(), "rng": self.aug_gen.get_state(), "device": self.device.type}
            if self.ada else {},
            "torch_version": str(torch.__version__),
        }

    def _scalers(self) -> tuple[tuple[str, torch.amp.GradScaler], ...]:
        return (("D", self.scaler_D), ("G", self.scaler_G))

    def _rng_state(self) -> dict[str, Any]:
        state = capture_rng_state(self.gen)
        if self._pending_gen_state is not None:
            # Indices already drawn for a prefetched batch are not consumed yet: a resumed run
            # draws them again, so it neither skips nor repeats a batch.
            state["generator"] = self._pending_gen_state.clone()
        if self.device.type == "cuda":
            # The device this process trains on, whichever index it has (G's noise and mixing draw
            # from it): every rank's runs the same stream, so any number of processes can resume it.
            state["cuda_device"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self) -> Path | None:
        """Write a rolling checkpoint (rank 0) and prune old ones; returns its path."""
        if self.rank != 0:
            return None
        path = save_checkpoint(self.ckpt_dir / rolling_name(self.cur_nimg), self._state())
        prune_checkpoints(self.ckpt_dir, self.train_cfg.keep_checkpoints)
        return path

    def _save_stage(self, resolution: int) -> Path | None:
        if self.rank != 0:
            return None
        rolling = self.ckpt_dir / rolling_name(self.cur_nimg)
        if not rolling.exists():
            save_checkpoint(rolling, self._state())
        target = self.ckpt_dir / stage_name(resolution)
        # Same bytes as the rolling checkpoint: copy through a temp file (atomic), no re-serialising.
        with rolling.open("rb") as src:
            atomic_write(target, lambda f: shutil.copyfileobj(src, f))
        prune_checkpoints(self.ckpt_dir, self.train_cfg.keep_checkpoints)
        return target

    def _resume(self) -> None:
        """Load the newest readable checkpoint; an unreadable newer one is skipped with a warning,
        but a run whose checkpoints are all unreadable refuses to start over silently."""
        candidates = [p for _, p in reversed(rolling_checkpoints(self.ckpt_dir))]
        candidates += sorted(self.ckpt_dir.glob("stage-*.pt"), key=os.path.getmtime, reverse=True)
        errors = []
        for path in candidates:
            try:
                state = load_checkpoint(path)  # on CPU; load_state_dict moves tensors to the device
            except CheckpointError as exc:
                errors.append(str(exc).splitlines()[0])
                continue
            for err in errors:
                warnings.warn(f"skipped unreadable checkpoint: {err}", stacklevel=3)
            self._load_state(state, path)
            return
        if errors:
            raise CheckpointError(
                f"no readable checkpoint in {self.ckpt_dir}: {'; '.join(errors)}. "
                "Move the folder away to start a fresh run"
            )

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("params_hash") != self.params_hash:
            raise CheckpointError(
                f"{path} was written with different model/train params (hash {state.get('params_hash')}, "
                f"now {self.params_hash}{self._changed_keys(state)}); use a new run_dir, or restore the params "
                "the run started with (only bookkeeping keys and train.final_kimg may change)"
            )
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.G_ema.load_state_dict(state["G_ema"])
        except RuntimeError as exc:  # same params, but the network code changed shape since
            raise CheckpointError(
                f"{path} does not fit the networks this code builds ({str(exc).splitlines()[0][:200]}); "
                "use a new run_dir, or the code version that wrote it"
            ) from exc
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.cur_nimg = int(state["cur_nimg"])
        self.step = int(state["step"])
        self.cur_resolution = int(state["cur_resolution"]) or None
        self._rewind_pending()
        restore_rng_state(state["rng"], self.gen)
        if "cuda_device" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda_device"].cpu(), self.device)
        dev = state.get("rng_device")
        if dev is not None and dev["device"] == self.device.type:
            self.dev_gen.set_state(dev["state"].cpu())
        else:
            # Generator states do not carry across device types: a fresh, seeded stream instead.
            warnings.warn(
                f"{path} was written on {dev['device'] if dev else 'an older version'}; flips and latents "
                f"continue from a fresh seeded stream on {self.device.type} (not bit-exact)",
                stacklevel=3,
            )
            self.dev_gen.manual_seed(self.train_cfg.seed + DEVICE_SEED_OFFSET + self.step)
        for name, scaler in self._scalers():
            if scaler.is_enabled() and f"scaler_{name}" in state:
                scaler.load_state_dict(state[f"scaler_{name}"])
        aug = state.get("augment") or {}
        if self.ada is not None and aug:
            self.ada.load_state_dict(aug["ada"])
            if aug.get("device", self.device.type) == self.device.type:
                self.aug_gen.set_state(aug["rng"].cpu())
            else:  # generator states do not carry across device types (as dev_gen above)
                self.aug_gen.manual_seed(self.train_cfg.seed + AUG_SEED_OFFSET + self.step)
        # A finished run's last step may pass the end by less than one batch (23 kimg at batch 16
        # ends at 23.008); past the end means it had already reached it before its last step.
        last = self.stages[-1]
        if self.cur_nimg - self.train_cfg.batch_size_at(last.resolution) >= last.end_kimg * 1000 - 1e-6:
            end = last.end_kimg
            raise CheckpointError(
                f"{path} has trained {self.kimg:g} kimg, past this schedule's end ({end:g} kimg): "
                f"train.final_kimg may only be raised for a run to continue; restore it, or use a new run_dir"
            )
        self.resumed_from = path

    def _changed_keys(self, state: dict[str, Any]) -> str:
        try:
            old_model, old_train = configs_from_checkpoint(state)
        except (KeyError, ValueError):
            return ""
        old = {**to_dict(old_model), **hashed_train_params(old_model, old_train, "?")}
        new = {**to_dict(self.model_cfg), **hashed_train_params(self.model_cfg, self.train_cfg, "?")}
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        return f"; changed: {', '.join(changed)}" if changed else ""

    # -- the training loop -------------------------------------------------------------------

    def _finished(self, stage: Stage) -> bool:
        # Same float expression as phase_at, so "finished" and "the schedule moved on" agree.
        return self.kimg >= stage.end_kimg

    def _dataset_for(self, resolution: int) -> PackedDataset:
        if self._dataset is None or self._dataset.resolution != resolution:
            self._dataset = PackedDataset(self.data_root, resolution)
        return self._dataset

    def _train_until(self, done: Callable[[], bool], max_steps: int | None) -> Path | None:
        """Step until ``done()``; handles ticks, snapshots and stage ends. Returns the last checkpoint."""
        t = self.train_cfg
        last: Path | None = None
        steps = 0
        self._start_tick()
        clock: tuple[int, float] = (-1, 0.0)  # (stage index, when this call started training it)
        while not done():
            if max_steps is not None and steps >= max_steps:
                last = self.save()
                break
            phase = self.phase
            if clock[0] != phase.stage.index:
                clock = (phase.stage.index, time.perf_counter())
            stats = self.train_step(phase)
            steps += 1
            self._accumulate(stats)
            if self.cur_nimg >= self._tick["next_nimg"]:
                self._emit_tick(phase)
            snap = self._snap_nimg()
            crossed_snapshot = self.cur_nimg // snap != (self.cur_nimg - phase.batch_size) // snap
            if self._finished(phase.stage):
                if self._tick["steps"]:
                    self._emit_tick(phase)
                last = self._save_stage(phase.resolution)
                self._snapshot(phase)
                result = StageResult(phase.resolution, self.kimg, last, time.perf_counter() - clock[1])
                self._call("on_stage_end", result)
            elif crossed_snapshot and t.snapshot_kimg > 0:
                last = self.save()
                self._snapshot(phase)
        return last

    def _snap_nimg(self) -> int:
        return max(round(self.train_cfg.snapshot_kimg * 1000), 1)

    def _enter_stage(self, phase: Phase) -> None:
        if self.cur_resolution is not None and self.train_cfg.reset_optimizer_at_growth:
            self.opt_G = self._make_optimizer(self.G)
            self.opt_D = self._make_optimizer(self.D)
        self.cur_resolution = phase.resolution

    def _rows(self, batch_size: int, on_device: bool = False) -> torch.Tensor:
        """This rank's rows of a global batch (whole minibatch-stddev groups; all rows alone),
        on the CPU or (cached, so no copy per step) on the training device."""
        rows = self._shards.get(batch_size)
        if rows is None:
            cpu = distributed.shard_rows(batch_size, self.world_size, self.rank, self.model_cfg.mbstd_group_size)
            rows = self._shards[batch_size] = (cpu, cpu.to(self.device))
        return rows[1] if on_device else rows[0]

    def _draw_indices(self, ds: PackedDataset, B: int) -> np.ndarray:
        """The next global batch of B indices from the seeded host stream; this rank's rows."""
        return torch.randint(len(ds), (B,), generator=self.gen)[self._rows(B)].numpy()

    def _rewind_pending(self) -> None:
        """Drop a prefetched batch that will not be used; its indices go back to the stream."""
        if self._pending_gen_state is not None:
            self.gen.set_state(self._pending_gen_state)
            self._pending_gen_state = None
        if self._prefetcher is not None:
            self._prefetcher.discard()

    def _prefetch_next(self, phase: Phase) -> None:
        """Draw the indices the next step will use and gather them in the background.

        The next step is predicted from the schedule; a wrong guess (a new stage, or a caller
        passing its own phase) is rewound by ``_reals``, so prefetching never changes which
        batches a run sees."""
        if self._prefetcher is None:
            return
        nxt = phase_at(self.train_cfg, self.model_cfg, (self.cur_nimg + phase.batch_size) / 1000.0)
        if nxt.resolution != phase.resolution:
            return  # a new stage opens another array; gathered in line at its first step
        ds = self._dataset_for(nxt.resolution)
        self._pending_gen_state = self.gen.get_state()
        idx = self._draw_indices(ds, nxt.batch_size)
        self._prefetcher.submit((nxt.resolution, nxt.batch_size, len(ds)), ds, idx)

    def _reals(self, phase: Phase) -> torch.Tensor:
        """This rank's rows of the batch, in [-1, 1], flipped and faded like G's output."""
        ds = self._dataset_for(phase.resolution)
        B = phase.batch_size
        key = (phase.resolution, B, len(ds))
        x = self._prefetcher.take(key) if self._prefetcher is not None else None
        if x is None:
            self._rewind_pending()
            x = ds.get_batch(self._draw_indices(ds, B)).to(self.device, non_blocking=True)
        self._pending_gen_state = None  # the drawn indices are consumed now
        x = x.float() / 127.5 - 1.0
        if self.train_cfg.mirror:
            flip = torch.rand(B, generator=self.dev_gen, device=self.device)[self._rows(B, on_device=True)] < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if phase.alpha < 1.0:
            # During a fade D must see reals blended the way G's output is (Progressive GAN).
            x = torch.lerp(upsample2x(downsample2x(x)), x, phase.alpha)
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _latents(self, n: int) -> torch.Tensor:
        B = n * self.world_size
        z = torch.randn(B, self.model_cfg.z_dim, generator=self.dev_gen, device=self.device)
        return z[self._rows(B, on_device=True)]

    def _sync_grads(self, net: torch.nn.Module) -> None:
        """Average gradients over ranks: one flattened all-reduce per network (StyleGAN2-ADA's way;
        DDP's backward hooks and R1's double backward mix poorly, pytorch issue 63812). Each rank's
        loss is the mean over its rows, so the average is the mean over the global batch. G's
        ``w_avg`` moved by this rank's mean w; averaging it gives the global batch's update."""
        extra = [self.G.mapping.w_avg] if net is self.G else []
        distributed.average_gradients(net.parameters(), self.world_size, extra=extra)

    def train_step(self, phase: Phase | None = None) -> dict[str, torch.Tensor]:
        """One D update and one G update at ``phase`` (default: the current one); no reporting or
        checkpointing (``run``/``run_stage`` add those). Returns loss_G, loss_D and r1 as detached
        0-dim tensors on the training device: nothing in a step waits for the device."""
        phase = phase or self.phase
        if phase.resolution != self.cur_resolution:
            self._enter_stage(phase)
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = phase.lr * group.get("lr_mul", 1.0)
        alpha_in: float | torch.Tensor = phase.alpha
        if self.train_cfg.compile is not False:
            alpha_in = self._alpha.fill_(phase.alpha)  # in place: no new host tensor, no recompile
        at = losses.StepArgs(phase.resolution, phase.alpha, alpha_in, phase.batch_size)
        b = phase.batch_size // self.world_size

        reals = self._reals(phase)
        self._prefetch_next(phase)  # gathered while this step computes
        z = self._latents(b)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        d = self.loss.d_phase(self.step, reals, z, at)
        self._update(self.D, self.opt_D, self.scaler_D, d.loss)

        z = self._latents(b)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        loss_G = self.loss.g_phase(z, at)
        self._update(self.G, self.opt_G, self.scaler_G, loss_G)
        self.D.requires_grad_(True)

        self._update_ema(phase.batch_size)
        if self.ada is not None and self.ada.due():
            self.ada.update(self.world_size)  # on the device: no host sync
        self.cur_nimg += phase.batch_size
        self.step += 1
        self._r1_applied = d.regularised  # lazy R1: ticks average r1 over these steps only
        return {"loss_G": loss_G.detach(), "loss_D": d.loss.detach(), "r1": d.penalty.detach()}

    def _update(self, net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                loss: torch.Tensor) -> None:
        """Backward ``loss`` into ``net`` (scaled: fp16), average over ranks, step (the scaler skips a
        step whose gradients overflowed)."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self._sync_grads(net)
        scaler.step(opt)
        scaler.update()

    @torch.no_grad()
    def _update_ema(self, batch_size: int) -> None:
        t = self.train_cfg
        ema_nimg = t.ema_kimg * 1000
        if t.ema_rampup is not None:
            # Early in a run a long half-life would keep G_ema at its random init (StyleGAN2-ADA's ramp-up).
            ema_nimg = min(ema_nimg, self.cur_nimg * t.ema_rampup)
        beta = 0.5 ** (batch_size / ema_nimg) if ema_nimg > 0 else 0.0
        # p_ema <- p + beta (p_ema - p), as one multi-tensor kernel (lerp's weight >= 0.5 branch makes
        # beta = 0 an exact copy).
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - beta)
        # Buffers: only those a step changes (w_avg follows G directly); const noise never changes.
        ema_bufs, bufs = dict(self.G_ema.named_buffers()), dict(self.G.named_buffers())
        torch._foreach_copy_([ema_bufs[n] for n in EMA_FOLLOWED_BUFFERS], [bufs[n] for n in EMA_FOLLOWED_BUFFERS])

    # -- reporting ---------------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> None:
        if self.rank != 0:
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _start_tick(self) -> None:
        tick = max(round(self.train_cfg.tick_kimg * 1000), 1)
        self._tick = {
            "size": tick,
            "next_nimg": (self.cur_nimg // tick + 1) * tick,
            "start_time": time.perf_counter(),
            "start_nimg": self.cur_nimg,
            "steps": 0,
            "r1_steps": 0,
            "sums": {},  # stat -> running sum, a device tensor (read once, in _emit_tick)
        }

    def _accumulate(self, stats: dict[str, torch.Tensor | float]) -> None:
        self._tick["steps"] += 1
        self._tick["r1_steps"] += int(self._r1_applied)
        sums = self._tick["sums"]
        for k, v in stats.items():
            sums[k] = v if k not in sums else sums[k] + v  # on the device: no sync

    def _tick_sums(self) -> dict[str, float]:
        """The tick's sums as floats: one device-to-host read for all of them."""
        sums = self._tick["sums"]
        names = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
        out = {k: float(v) for k, v in sums.items() if k not in names}
        if names:
            # Each rank's losses are means over its rows: the mean over ranks is the global batch's.
            stacked = distributed.all_reduce_mean(torch.stack([sums[k].float() for k in names]), self.world_size)
            out.update(zip(names, stacked.tolist(), strict=True))
        return {"loss_G": 0.0, "loss_D": 0.0, "r1": 0.0, **out}

    def _emit_tick(self, phase: Phase) -> None:
        tk = self._tick
        sums = self._tick_sums()  # waits for the device: the tick's time includes all its steps
        secs = time.perf_counter() - tk["start_time"]
        n = max(tk["steps"], 1)
        stats = {
            "kimg": self.kimg,
            "resolution": phase.resolution,
            "alpha": phase.alpha,
            "lr": phase.lr,
            "batch_size": phase.batch_size,
            "loss_G": sums["loss_G"] / n,
            "loss_D": sums["loss_D"] / n,
            # With lazy R1 the penalty exists on every r1_interval-th step; averaging the zeros
            # of the other steps in would report it 1/r1_interval times too small.
            "r1": sums["r1"] / max(tk["r1_steps"], 1),
            "images_per_sec": (self.cur_nimg - tk["start_nimg"]) / max(secs, 1e-9),
            "sec_per_tick": secs,
            "stage": phase.stage.index,
            "augment_p": 0.0,
        }
        if self.ada is not None:  # p and r_t live on the device: one read per tick, here
            stats["augment_p"], stats["ada_rt"] = torch.stack([self.ada.p, self.ada.rt]).tolist()
        self._call("on_tick", stats)
        self._start_tick()

    def _snapshot(self, phase: Phase) -> None:
        if self.rank != 0:
            return
        t = self.train_cfg
        # Sampling must not shift the training RNG (rank 0 alone samples: the ranks' streams must agree).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            imgs = generate(
                self.G_ema,
                seeds=t.grid_seeds,
                truncation_psi=t.truncation_psi,
                noise_mode="const",
                resolution=phase.resolution,
                alpha=self.phase.alpha if self.phase.resolution == phase.resolution else 1.0,
            )
        grid = image_grid(imgs, cols=min(len(imgs), max(1, math.ceil(math.sqrt(len(imgs) * 2)))))
        path = save_png(grid, self.snapshot_dir / f"fakes-{self.cur_nimg:09d}-{phase.resolution}.png")
        self._call("on_snapshot", phase.resolution, self.kimg, grid, path)

