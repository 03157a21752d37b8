"""The trainer: progressive growing one stage (resolution) at a time, G_ema, exact resume.

Everything random that training consumes comes from state the checkpoint carries: the
trainer's own ``torch.Generator`` (batch indices, flips, latents, GP mixing), and the global
torch RNG (noise inputs and style mixing inside G). A run stopped after any step and resumed
by a new ``Trainer`` on the same ``run_dir`` therefore continues bit for bit on CPU.

Trackers are reached only through callbacks; only rank 0 saves files or reports.

Several processes (torchrun; ``stylegan.distributed``) train as one: each draws the whole
global batch from the same seeded stream and computes its share of the rows (whole
minibatch-stddev groups), gradients are averaged with one flattened all-reduce per network,
and G's ``w_avg`` rides along in G's buffer. N processes therefore compute what one process
computes with the same global batch (up to float summation order), and a checkpoint carries
nothing that depends on the number of processes.
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

from stylegan import distributed, losses
from stylegan.checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    export_generator,
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
        self.train_cfg = train_cfg
        self.data_root = Path(data_root)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.snapshot_dir = self.run_dir / "snapshots"
        self.rank = rank
        self.world_size = world_size
        self.callbacks = list(callbacks)
        self.device = resolve_device(train_cfg.device if device == "auto" else device)
        self.stages: list[Stage] = stages(train_cfg, model_cfg)
        self.params_hash = params_hash(model_cfg, train_cfg)
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
        self.gen = torch.Generator().manual_seed(seed)  # batch indices, flips, latents: the same on every rank

        self.G = Generator(model_cfg).to(self.device)
        self.D = Discriminator(model_cfg).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
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
        # The mapping network's 0.01 learning-rate multiplier lives in its layers (equalized lr).
        t = self.train_cfg
        return torch.optim.Adam(net.parameters(), lr=t.lr, betas=tuple(t.betas), eps=t.eps)

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
            "rng": self._rng_state(),
            "torch_version": str(torch.__version__),
        }

    def _rng_state(self) -> dict[str, Any]:
        rng = capture_rng_state(self.gen)
        if self.device.type == "cuda":
            # The device this process trains on, whichever index it has: every rank's device RNG
            # runs the same stream, so a run resumed under another number of processes continues it.
            rng["cuda_device"] = torch.cuda.get_rng_state(self.device)
        return rng

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
                f"now {self.params_hash}); use a new run_dir, or restore the params the run started with"
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
        if "cuda_device" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda_device"].cpu(), self.device)
        self.resumed_from = path

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

    def _shard(self, batch_size: int) -> tuple[int, torch.Tensor] | None:
        """What G needs to draw its random inputs (noise, mixing latents) for the global batch."""
        if self.world_size == 1:
            return None
        return (batch_size, self._rows(batch_size, on_device=True))

    def _reals(self, phase: Phase) -> torch.Tensor:
        """This rank's rows of the batch, in [-1, 1], flipped and faded like G's output."""
        ds = self._dataset_for(phase.resolution)
        B = phase.batch_size
        mine = self._rows(B)  # every rank draws the whole batch, so the stream is the same for all
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
        return z[self._rows(B)].to(self.device)

    def _sync_grads(self, net: torch.nn.Module) -> None:
        """Average gradients over ranks: one flattened all-reduce per network (StyleGAN2-ADA's way;
        DDP's backward hooks and R1's double backward mix poorly, pytorch issue 63812). Each rank's
        loss is the mean over its rows, so the average is the mean over the global batch. G's
        ``w_avg`` moved by this rank's mean w; averaging it gives the global batch's update."""
        extra = [self.G.mapping.w_avg] if net is self.G else []
        distributed.average_gradients(net.parameters(), self.world_size, extra=extra)

    def train_step(self, phase: Phase | None = None) -> dict[str, float]:
        """One D update and one G update at ``phase`` (default: the current one); no reporting or
        checkpointing (``run``/``run_stage`` add those). Returns loss_G, loss_D and r1."""
        phase = phase or self.phase
        t, m = self.train_cfg, self.model_cfg
        if phase.resolution != self.cur_resolution:
            self._enter_stage(phase)
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = phase.lr
        res, alpha = phase.resolution, phase.alpha
        # Compiled graphs get alpha as a tensor: a Python float would be baked in and recompiled
        # at every new value during a fade-in.
        alpha_in: float | torch.Tensor = torch.tensor(alpha, device=self.device) if t.compile else alpha
        b = phase.batch_size // self.world_size
        g_kwargs = {"resolution": res, "alpha": alpha_in, "mixing_prob": m.style_mixing_prob, "noise_mode": "random",
                    "shard": self._shard(phase.batch_size)}

        # --- D step ---
        reals = self._reals(phase)
        z = self._latents(b)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fakes = self._G_fwd(z, **g_kwargs)
        r1 = torch.zeros((), device=self.device)
        do_r1 = t.r1_gamma > 0 and self.step % t.r1_interval == 0
        if t.loss == "logistic":
            with self._autocast():
                fake_logits = self._D_fwd(fakes.detach(), resolution=res, alpha=alpha_in)
            if do_r1:
                reals_g = reals.detach().requires_grad_(True)
                real_logits = self.D(reals_g, resolution=res, alpha=alpha)
                r1 = losses.r1_penalty(real_logits, reals_g)
            else:
                with self._autocast():
                    real_logits = self._D_fwd(reals, resolution=res, alpha=alpha_in)
            loss_D = losses.logistic_d_loss(real_logits.float(), fake_logits.float())
            if do_r1:
                # Lazy regularisation: applied every r1_interval steps, scaled to keep its strength.
                loss_D = loss_D + r1 * (t.r1_gamma * 0.5 * t.r1_interval)
        else:
            # On CPU the interpolation points come from the trainer's generator (exact resume);
            # on CUDA from the device RNG, whose state the checkpoint also carries.
            gp_gen = self.gen if self.device.type == "cpu" else None
            B = phase.batch_size  # drawn for the global batch, this rank's rows kept
            gp_t = torch.rand(B, 1, 1, 1, device=self.device, dtype=reals.dtype, generator=gp_gen)
            loss_D, r1 = losses.wgan_gp_d_loss(
                lambda x: self.D(x, resolution=res, alpha=alpha),
                reals,
                fakes.float(),
                wgan_lambda=t.wgan_lambda,
                wgan_epsilon=t.wgan_epsilon,
                weights=gp_t[self._rows(B, on_device=True)],
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
            fake_logits = self._D_fwd(fakes, resolution=res, alpha=alpha_in)
        g_loss = losses.logistic_g_loss if t.loss == "logistic" else losses.wgan_g_loss
        loss_G = g_loss(fake_logits.float())
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self._sync_grads(self.G)
        self.opt_G.step()
        self.D.requires_grad_(True)

        self._update_ema(phase.batch_size)
        self.cur_nimg += phase.batch_size
        self.step += 1
        self._r1_applied = do_r1 if t.loss == "logistic" else True  # lazy R1: ticks average r1 over these steps only
        return {"loss_G": float(loss_G.detach()), "loss_D": float(loss_D.detach()), "r1": float(r1.detach())}

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
        if self.world_size > 1:  # each rank's losses are means over its rows: report the global mean
            keys = sorted(tk["sums"])
            mean = distributed.all_reduce_mean(torch.tensor([tk["sums"][k] for k in keys], device=self.device),
                                               self.world_size)
            tk["sums"] = dict(zip(keys, mean.tolist(), strict=True))
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
        }
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

