"""The trainer: progressive growing one stage (resolution) at a time, G_ema, exact resume.

Everything random that training consumes comes from state the checkpoint carries: the
trainer's own ``torch.Generator`` (batch indices, flips, latents, GP mixing), and the global
torch RNG (noise inputs and style mixing inside G). A run stopped after any step and resumed
by a new ``Trainer`` on the same ``run_dir`` therefore continues bit for bit on CPU.

Trackers are reached only through callbacks; only rank 0 saves files or reports.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from stylegan import losses, transfer
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
from stylegan.layers import downsample2x, upsample2x
from stylegan.networks import Discriminator, Generator
from stylegan.sampling import generate, image_grid, save_png
from stylegan.schedule import Phase, Stage, phase_at, stage_for, stages


@dataclass(frozen=True)
class StageResult:
    resolution: int
    kimg: float  # images shown (thousands) when the stage ended
    checkpoint: Path | None  # run_dir/checkpoints/stage-<R>.pt (None on ranks other than 0)
    seconds: float  # wall time spent training in this call (0 when the stage was already done)


class TrainerCallback(Protocol):
    """What a tracker may implement; every method is optional (looked up with getattr)."""

    def on_tick(self, stats: dict[str, Any]) -> None: ...

    def on_snapshot(self, resolution: int, kimg: float, grid: Image.Image, path: Path) -> None: ...

    def on_stage_end(self, result: StageResult) -> None: ...


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as given (with a clear error)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use device 'auto' or 'cpu'")
    return dev


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
            if train_cfg.batch_size_at(s.resolution) % world_size:
                raise ValueError(f"batch size at {s.resolution} must be divisible by world_size={world_size}")
        self._check_data()

        # Fresh-run randomness; a resumed run overwrites all of it from the checkpoint.
        seed = train_cfg.seed
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.gen = torch.Generator().manual_seed(seed)  # batch indices, flips, latents: the same on every rank

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
        self._G_fwd = torch.compile(self.G) if train_cfg.compile else self.G
        self._D_fwd = torch.compile(self.D) if train_cfg.compile else self.D
        self.amp_dtype = self._amp_dtype()
        # What D sees goes through augment_pipe (reals, fakes and the R1 pass); ada tunes its p.
        self.augment_pipe: AugmentPipe | None = None
        self.ada: AdaController | None = None
        if train_cfg.augment != "none":
            self.augment_pipe = AugmentPipe(ops=train_cfg.augment_ops)
            self.ada = AdaController(target=train_cfg.ada_target, speed_kimg=train_cfg.ada_kimg,
                                     interval=train_cfg.ada_interval, p=train_cfg.augment_p,
                                     adjust=train_cfg.augment == "ada", device=self.device)
        # Its own stream, on the device, offset per rank (each rank augments its own slice).
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 0x5EED + rank)

        self.cur_nimg = 0  # images shown so far (all ranks together)
        self.step = 0  # training steps (one D + one G update each) so far
        self.cur_resolution: int | None = None  # resolution of the last step (growth detection)
        self._dataset: PackedDataset | None = None
        self._tick: dict[str, Any] = {}
        self._r1_applied = False  # whether the last train_step computed the R1 / GP penalty
        self.resumed_from: Path | None = None
        if self.rank == 0 and self.ckpt_dir.exists():
            remove_stale_temp_files(self.ckpt_dir)
        self._resume()

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
        t = self.train_cfg
        noise = [p for n, p in net.named_parameters() if ".noise" in n and n.endswith(".weight")]
        rest = [p for n, p in net.named_parameters() if not (".noise" in n and n.endswith(".weight"))]
        groups = [{"params": rest, "lr_mul": 1.0}]
        if noise:
            groups.append({"params": noise, "lr_mul": t.noise_lr_mul})
        return torch.optim.Adam(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps)

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.train_cfg.amp or self.device.type != "cuda":
            return None  # fp32 on CPU: autocast there is slower and changes results
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16  # no loss scaling needed
        warnings.warn("amp: this GPU lacks bf16; training in fp32", stacklevel=2)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

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
            "rng": capture_rng_state(self.gen),
            "augment": {"ada": self.ada.state_dict(), "rng": self.aug_gen.get_state()} if self.ada else {},
            "torch_version": str(torch.__version__),
        }

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
        restore_rng_state(state["rng"], self.gen)
        aug = state.get("augment") or {}
        if self.ada is not None and aug:
            self.ada.load_state_dict(aug["ada"])
            self.aug_gen.set_state(aug["rng"].cpu())
        end = self.stages[-1].end_kimg
        if self.kimg > end + 1e-9:
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

    def _reals(self, phase: Phase) -> torch.Tensor:
        """This rank's slice of the batch, in [-1, 1], flipped and faded like G's output."""
        ds = self._dataset_for(phase.resolution)
        B, b = phase.batch_size, phase.batch_size // self.world_size
        mine = slice(self.rank * b, (self.rank + 1) * b)
        idx = torch.randint(len(ds), (B,), generator=self.gen)[mine]
        flip = (torch.rand(B, generator=self.gen) < 0.5)[mine]
        x = ds.get_batch(idx.numpy()).to(self.device, non_blocking=True).float() / 127.5 - 1.0
        if self.train_cfg.mirror:
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        if phase.alpha < 1.0:
            # During a fade D must see reals blended the way G's output is (Progressive GAN).
            x = torch.lerp(upsample2x(downsample2x(x)), x, phase.alpha)
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _latents(self, n: int) -> torch.Tensor:
        B = n * self.world_size
        z = torch.randn(B, self.model_cfg.z_dim, generator=self.gen)
        return z[self.rank * n : (self.rank + 1) * n].to(self.device)

    def _sync_grads(self, net: torch.nn.Module) -> None:
        if self.world_size == 1:
            return
        for p in net.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world_size

    def train_step(self, phase: Phase | None = None) -> dict[str, float]:
        """One D update and one G update at ``phase`` (default: the current one); no reporting or
        checkpointing (``run``/``run_stage`` add those). Returns loss_G, loss_D and r1."""
        phase = phase or self.phase
        t, m = self.train_cfg, self.model_cfg
        if phase.resolution != self.cur_resolution:
            self._enter_stage(phase)
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = phase.lr * group.get("lr_mul", 1.0)
        res, alpha = phase.resolution, phase.alpha
        # Compiled graphs get alpha as a tensor: a Python float would be baked in and recompiled
        # at every new value during a fade-in.
        alpha_in: float | torch.Tensor = torch.tensor(alpha, device=self.device) if t.compile else alpha
        b = phase.batch_size // self.world_size
        g_kwargs = {"resolution": res, "alpha": alpha_in, "mixing_prob": m.style_mixing_prob, "noise_mode": "random"}

        # --- D step ---
        reals = self._reals(phase)
        z = self._latents(b)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fakes = self._G_fwd(z, **g_kwargs)
        r1 = torch.zeros((), device=self.device)
        r1_gamma = t.r1_gamma_at(res)
        do_r1 = r1_gamma > 0 and self.step % t.r1_interval == 0
        if t.loss == "logistic":
            with self._autocast():
                fake_logits = self._D_fwd(self._augment(fakes.detach()), resolution=res, alpha=alpha_in)
            if do_r1:
                # R1 is the gradient w.r.t. the clean reals, through the augmentation (as ADA).
                reals_g = reals.detach().requires_grad_(True)
                real_logits = self.D(self._augment(reals_g), resolution=res, alpha=alpha)
                r1 = losses.r1_penalty(real_logits, reals_g)
            else:
                with self._autocast():
                    real_logits = self._D_fwd(self._augment(reals), resolution=res, alpha=alpha_in)
            if self.ada is not None:
                self.ada.accumulate(real_logits, phase.batch_size)
            loss_D = losses.logistic_d_loss(real_logits.float(), fake_logits.float())
            if do_r1:
                # Lazy regularisation: applied every r1_interval steps, scaled to keep its strength.
                loss_D = loss_D + r1 * (r1_gamma * 0.5 * t.r1_interval)
        else:
            # On CPU the interpolation points come from the trainer's generator (exact resume);
            # on CUDA from the device RNG, whose state the checkpoint also carries.
            gp_gen = self.gen if self.device.type == "cpu" else None
            loss_D, r1 = losses.wgan_gp_d_loss(
                lambda x: self.D(self._augment(x), resolution=res, alpha=alpha),
                reals,
                fakes.float(),
                wgan_lambda=t.wgan_lambda,
                wgan_epsilon=t.wgan_epsilon,
                generator=gp_gen,
            )
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self._sync_grads(self.D)
        self.opt_D.step()

        # --- G step ---
        z = self._latents(b)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self._autocast():
            fakes = self._G_fwd(z, update_w_avg=True, **g_kwargs)
            fake_logits = self._D_fwd(self._augment(fakes), resolution=res, alpha=alpha_in)
        g_loss = losses.logistic_g_loss if t.loss == "logistic" else losses.wgan_g_loss
        loss_G = g_loss(fake_logits.float())
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self._sync_grads(self.G)
        self.opt_G.step()
        self.D.requires_grad_(True)

        self._update_ema(phase.batch_size)
        if self.ada is not None and self.ada.due():
            self.ada.update(self.world_size)  # on the device: no host sync
        self.cur_nimg += phase.batch_size
        self.step += 1
        self._r1_applied = do_r1 if t.loss == "logistic" else True  # lazy R1: ticks average r1 over these steps only
        return {"loss_G": float(loss_G.detach()), "loss_D": float(loss_D.detach()), "r1": float(r1.detach())}

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees: ``x`` through the augmentation pipe at the current p (identity when off)."""
        if self.augment_pipe is None or self.ada is None:
            return x
        return self.augment_pipe(x, self.ada.p, self.aug_gen)

    @torch.no_grad()
    def _update_ema(self, batch_size: int) -> None:
        t = self.train_cfg
        ema_nimg = t.ema_kimg * 1000
        if t.ema_rampup is not None:
            # Early in a run a long half-life would keep G_ema at its random init (StyleGAN2-ADA's ramp-up).
            ema_nimg = min(ema_nimg, self.cur_nimg * t.ema_rampup)
        beta = 0.5 ** (batch_size / ema_nimg) if ema_nimg > 0 else 0.0
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)  # w_avg and the const noise follow G directly

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
            "sums": {"loss_G": 0.0, "loss_D": 0.0, "r1": 0.0},
        }

    def _accumulate(self, stats: dict[str, float]) -> None:
        self._tick["steps"] += 1
        self._tick["r1_steps"] += int(self._r1_applied)
        for k, v in stats.items():
            self._tick["sums"][k] += v

    def _emit_tick(self, phase: Phase) -> None:
        tk = self._tick
        secs = time.perf_counter() - tk["start_time"]
        n = max(tk["steps"], 1)
        stats = {
            "kimg": self.kimg,
            "resolution": phase.resolution,
            "alpha": phase.alpha,
            "lr": phase.lr,
            "batch_size": phase.batch_size,
            "loss_G": tk["sums"]["loss_G"] / n,
            "loss_D": tk["sums"]["loss_D"] / n,
            # With lazy R1 the penalty exists on every r1_interval-th step; averaging the zeros
            # of the other steps in would report it 1/r1_interval times too small.
            "r1": tk["sums"]["r1"] / max(tk["r1_steps"], 1),
            "images_per_sec": (self.cur_nimg - tk["start_nimg"]) / max(secs, 1e-9),
            "sec_per_tick": secs,
            "stage": phase.stage.index,
            # p and r_t are read from the device here, once per tick.
            "augment_p": float(self.ada.p) if self.ada is not None else 0.0,
        }
        if self.ada is not None:
            stats["ada_rt"] = float(self.ada.rt)
        self._call("on_tick", stats)
        self._start_tick()

    def _snapshot(self, phase: Phase) -> None:
        if self.rank != 0:
            return
        t = self.train_cfg
        with torch.random.fork_rng(devices=[]):  # sampling must not shift the training RNG
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

