"""A training run's state as a checkpoint: the schema, writing it, resuming from it, and reading a
run folder's progress and export without building a trainer.

A checkpoint holds G, D, G_ema, both optimizers, the fp16 loss scalers, the images shown and
step, every RNG stream (the global torch/numpy/python ones, the host index stream, the device
stream for flips, latents and GP mixing, the augmentation stream) and the ADA controller, so a
run resumed from it continues bit for bit on CPU. Indices already drawn for a prefetched batch
are saved as not yet drawn: a resumed run draws them again.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from stylegan.checkpoint import (
    CheckpointError,
    atomic_write,
    capture_rng_state,
    configs_from_checkpoint,
    export_generator_state,
    hashed_train_params,
    load_checkpoint,
    params_hash,
    prune_checkpoints,
    restore_rng_state,
    rolling_checkpoints,
    rolling_name,
    save_checkpoint,
    stage_name,
)
from stylegan.config import ModelConfig, TrainConfig, to_dict
from stylegan.training import transfer
from stylegan.training.augment import AdaController
from stylegan.training.batches import RealBatches, check_data
from stylegan.training.schedule import Phase, Stage, phase_at, stages

DEVICE_SEED_OFFSET = 0x5EED  # the device generator starts from train.seed + this
AUG_SEED_OFFSET = 0xA6E  # the augmentation generator: its own stream, not a copy of the latents'


class RngStreams:
    """The run's seeded streams; creating them seeds the global RNGs too (a fresh run's state).

    ``index_gen`` (host) draws batch indices; ``device_gen`` flips, latents and GP mixing points,
    drawn where they are used (no host->device copy, no sync); ``aug_gen`` augmentation. Each is
    the same on every rank: every rank draws for the global batch and keeps its rows."""

    def __init__(self, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.seed, self.device = seed, device
        self.index_gen = torch.Generator().manual_seed(seed)
        self.device_gen = torch.Generator(device).manual_seed(seed + DEVICE_SEED_OFFSET)
        self.aug_gen = torch.Generator(device=device).manual_seed(seed + AUG_SEED_OFFSET)

    def capture(self, pending_index_state: torch.Tensor | None) -> dict[str, Any]:
        """The checkpoint's ``rng`` entry: global RNGs and the index stream (before a pending batch)."""
        state = capture_rng_state(self.index_gen)
        if pending_index_state is not None:
            # Indices already drawn for a prefetched batch are not consumed yet: a resumed run
            # draws them again, so it neither skips nor repeats a batch.
            state["generator"] = pending_index_state.clone()
        if self.device.type == "cuda":
            # The device this process trains on, whichever index it has (G's noise and mixing draw
            # from it): every rank's runs the same stream, so any number of processes can resume it.
            state["cuda_device"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, state: dict[str, Any], path: Path, step: int) -> None:
        restore_rng_state(state["rng"], self.index_gen)
        if "cuda_device" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda_device"].cpu(), self.device)
        dev = state.get("rng_device")
        if dev is not None and dev["device"] == self.device.type:
            self.device_gen.set_state(dev["state"].cpu())
        else:
            # Generator states do not carry across device types: a fresh, seeded stream instead.
            warnings.warn(
                f"{path} was written on {dev['device'] if dev else 'an older version'}; flips and latents "
                f"continue from a fresh seeded stream on {self.device.type} (not bit-exact)",
                stacklevel=4,
            )
            self.device_gen.manual_seed(self.seed + DEVICE_SEED_OFFSET + step)


# -- the schema ---------------------------------------------------------------------------------


class TrainerLike(Protocol):
    """What the schema reads and writes of ``stylegan.training.Trainer`` (no import: no cycle)."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    params_hash: str
    stages: list[Stage]
    device: torch.device
    rank: int
    ckpt_dir: Path
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    cur_nimg: int
    step: int
    cur_resolution: int | None
    rng: RngStreams
    batches: RealBatches
    ada: AdaController | None
    resumed_from: Path | None

    @property
    def kimg(self) -> float: ...

    @property
    def phase(self) -> Phase: ...


def checkpoint_state(tr: TrainerLike) -> dict[str, Any]:
    """What a checkpoint of ``tr`` holds (key order kept: it is the file's layout)."""
    phase = tr.phase
    return {
        "model_config": to_dict(tr.model_cfg),
        "train_config": to_dict(tr.train_cfg),
        "params_hash": tr.params_hash,
        "G": tr.G.state_dict(),  # includes mapping.w_avg
        "D": tr.D.state_dict(),
        "G_ema": tr.G_ema.state_dict(),
        "opt_G": tr.opt_G.state_dict(),
        "opt_D": tr.opt_D.state_dict(),
        "cur_nimg": tr.cur_nimg,
        "kimg": tr.kimg,
        "step": tr.step,
        "cur_resolution": tr.cur_resolution or 0,
        "stage": phase.stage.index,
        "alpha": phase.alpha,
        "rng": tr.rng.capture(tr.batches.pending_index_state),
        "rng_device": {"device": tr.device.type, "state": tr.rng.device_gen.get_state()},
        **{f"scaler_{n}": sc.state_dict() for n, sc in _scalers(tr) if sc.is_enabled()},  # fp16 only
        "augment": {"ada": tr.ada.state_dict(), "rng": tr.rng.aug_gen.get_state(), "device": tr.device.type}
        if tr.ada else {},
        "torch_version": str(torch.__version__),
    }


def _scalers(tr: TrainerLike) -> tuple[tuple[str, torch.amp.GradScaler], ...]:
    return (("D", tr.scaler_D), ("G", tr.scaler_G))


def load_state(tr: TrainerLike, state: dict[str, Any], path: Path) -> None:
    """Put ``state`` (read from ``path``) into ``tr``, refusing a checkpoint of another run."""
    _check_params(state, path, tr.model_cfg, tr.train_cfg, tr.params_hash)
    try:
        tr.G.load_state_dict(state["G"])
        tr.D.load_state_dict(state["D"])
        tr.G_ema.load_state_dict(state["G_ema"])
    except RuntimeError as exc:  # same params, but the network code changed shape since
        raise _misfit(path, exc) from exc
    tr.opt_G.load_state_dict(state["opt_G"])
    tr.opt_D.load_state_dict(state["opt_D"])
    tr.cur_nimg = int(state["cur_nimg"])
    tr.step = int(state["step"])
    tr.cur_resolution = int(state["cur_resolution"]) or None
    tr.batches.rewind_pending()
    tr.rng.restore(state, path, tr.step)
    for name, scaler in _scalers(tr):
        if scaler.is_enabled() and f"scaler_{name}" in state:
            scaler.load_state_dict(state[f"scaler_{name}"])
    aug = state.get("augment") or {}
    if tr.ada is not None and aug:
        tr.ada.load_state_dict(aug["ada"])
        if aug.get("device", tr.device.type) == tr.device.type:
            tr.rng.aug_gen.set_state(aug["rng"].cpu())
        else:  # generator states do not carry across device types (as device_gen above)
            tr.rng.aug_gen.manual_seed(tr.train_cfg.seed + AUG_SEED_OFFSET + tr.step)
    _check_not_past_end(tr.cur_nimg, path, tr.stages, tr.train_cfg)
    tr.resumed_from = path


def resume(tr: TrainerLike) -> None:
    """Load the newest readable checkpoint of ``tr.ckpt_dir`` into ``tr`` (nothing there: a fresh run)."""
    found = newest_readable(tr.ckpt_dir)
    if found is not None:
        load_state(tr, found[0], found[1])


def save(tr: TrainerLike) -> Path | None:
    """Write a rolling checkpoint (rank 0) and prune old ones; returns its path."""
    if tr.rank != 0:
        return None
    path = save_checkpoint(tr.ckpt_dir / rolling_name(tr.cur_nimg), checkpoint_state(tr))
    prune_checkpoints(tr.ckpt_dir, tr.train_cfg.keep_checkpoints)
    return path


def save_stage(tr: TrainerLike, resolution: int) -> Path | None:
    """The stage-final checkpoint (rank 0): the same bytes as the rolling one at this step."""
    if tr.rank != 0:
        return None
    rolling = tr.ckpt_dir / rolling_name(tr.cur_nimg)
    if not rolling.exists():
        save_checkpoint(rolling, checkpoint_state(tr))
    target = tr.ckpt_dir / stage_name(resolution)
    # Copied through a temp file (atomic), no re-serialising.
    with rolling.open("rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))
    prune_checkpoints(tr.ckpt_dir, tr.train_cfg.keep_checkpoints)
    return target


# -- resume validation --------------------------------------------------------------------------


def newest_readable(ckpt_dir: Path, *, mmap: bool = False) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint (rolling ones first, then stage-final ones by mtime); an
    unreadable newer one is skipped with a warning, but a folder whose checkpoints are all
    unreadable refuses to start over silently. ``mmap``: tensors stay on disk (header reads)."""
    candidates = [p for _, p in reversed(rolling_checkpoints(ckpt_dir))]
    candidates += sorted(ckpt_dir.glob("stage-*.pt"), key=os.path.getmtime, reverse=True)
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path, mmap=mmap)  # on CPU; load_state_dict moves tensors to the device
        except CheckpointError as exc:
            errors.append(str(exc).splitlines()[0])
            continue
        for err in errors:
            warnings.warn(f"skipped unreadable checkpoint: {err}", stacklevel=4)
        return state, path
    if errors:
        raise CheckpointError(
            f"no readable checkpoint in {ckpt_dir}: {'; '.join(errors)}. Move the folder away to start a fresh run"
        )
    return None


def _check_params(state: dict[str, Any], path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  expected_hash: str) -> None:
    if state.get("params_hash") != expected_hash:
        raise CheckpointError(
            f"{path} was written with different model/train params (hash {state.get('params_hash')}, "
            f"now {expected_hash}{changed_keys(state, model_cfg, train_cfg)}); use a new run_dir, or restore the "
            "params the run started with (only bookkeeping keys and train.final_kimg may change)"
        )


def _misfit(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} does not fit the networks this code builds ({str(exc).splitlines()[0][:200]}); "
        "use a new run_dir, or the code version that wrote it"
    )


def _check_not_past_end(cur_nimg: int, path: Path, plan: list[Stage], train_cfg: TrainConfig) -> None:
    # A finished run's last step may pass the end by less than one batch (23 kimg at batch 16
    # ends at 23.008); past the end means it had already reached it before its last step.
    last = plan[-1]
    if cur_nimg - train_cfg.batch_size_at(last.resolution) >= last.end_kimg * 1000 - 1e-6:
        raise CheckpointError(
            f"{path} has trained {cur_nimg / 1000.0:g} kimg, past this schedule's end ({last.end_kimg:g} kimg): "
            f"train.final_kimg may only be raised for a run to continue; restore it, or use a new run_dir"
        )


def changed_keys(state: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """"; changed: a, b" naming the params that differ from the checkpoint's (or "")."""
    try:
        old_model, old_train = configs_from_checkpoint(state)
    except (KeyError, ValueError):
        return ""
    old = {**to_dict(old_model), **hashed_train_params(old_model, old_train, "?")}
    new = {**to_dict(model_cfg), **hashed_train_params(model_cfg, train_cfg, "?")}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return f"; changed: {', '.join(changed)}" if changed else ""


# -- a run folder, read without a trainer ---------------------------------------------------------


@dataclass(frozen=True)
class RunProgress:
    kimg: float  # images shown by the newest readable checkpoint (0 for a fresh run)
    finished: tuple[int, ...]  # resolutions whose stage is complete
    checkpoint: Path | None  # the checkpoint a Trainer on this run resumes from (None: scratch)

    def done(self, resolution: int) -> bool:
        return resolution in self.finished


def _run_plan(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[TrainConfig, Any, str, list[Stage]]:
    """What the Trainer derives from the configs: effective train config, source, params hash, stages."""
    eff, source = transfer.effective_train_config(train_cfg, model_cfg)
    return eff, source, params_hash(model_cfg, eff, source and source.sha256), stages(eff, model_cfg)


def _newest_checked(run_dir: str | Path, model_cfg: ModelConfig, eff: TrainConfig, expected_hash: str,
                    plan: list[Stage], *, mmap: bool = False) -> tuple[dict[str, Any], Path] | None:
    """``run_dir``'s newest readable checkpoint, with a resuming Trainer's refusals (None: none)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = newest_readable(ckpt_dir, mmap=mmap) if ckpt_dir.exists() else None
    if found is not None:
        state, path = found
        _check_params(state, path, model_cfg, eff, expected_hash)
        _check_shapes(state, path, model_cfg)
        _check_not_past_end(int(state["cur_nimg"]), path, plan, eff)
    return found


def run_progress(run_dir: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 data_root: str | Path | None = None) -> RunProgress:
    """Where the run in ``run_dir`` stands, from the newest checkpoint's small fields (tensors are
    memory-mapped, not read), with the same refusals as a Trainer resuming it: another run's
    params, networks of another shape, a schedule shortened below it; missing data (``data_root``)."""
    eff, _, expected_hash, plan = _run_plan(model_cfg, train_cfg)
    if data_root is not None:
        check_data(Path(data_root), plan)
    found = _newest_checked(run_dir, model_cfg, eff, expected_hash, plan, mmap=True)
    if found is None:
        return RunProgress(0.0, tuple(s.resolution for s in plan if s.end_kimg <= 0.0), None)
    state, path = found
    kimg = int(state["cur_nimg"]) / 1000.0
    return RunProgress(kimg, tuple(s.resolution for s in plan if kimg >= s.end_kimg), path)


def _check_shapes(state: dict[str, Any], path: Path, model_cfg: ModelConfig) -> None:
    """load_state_dict's strict check, against networks built on the meta device (no memory)."""
    from stylegan.training.networks import Discriminator, Generator

    with torch.device("meta"):
        nets = {"G": Generator(model_cfg), "D": Discriminator(model_cfg)}
    # A projected D's frozen feature network is rebuilt from its weights package, not from shapes
    # alone: its checkpoint entry is checked by load_state_dict when a Trainer resumes.
    pairs = (("G", "G"), ("D", "D"), ("G_ema", "G")) if model_cfg.discriminator == "progan" else (
        ("G", "G"), ("G_ema", "G"))
    for key, net_key in pairs:
        want = {k: tuple(v.shape) for k, v in nets[net_key].state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state[key].items()}
        if want != have:
            bad = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            raise _misfit(path, RuntimeError(f"Error(s) in loading state_dict for {key}: {bad[:5]}"))


def export_resolution(plan: list[Stage], model_cfg: ModelConfig, train_cfg: TrainConfig, kimg: float) -> int:
    """The highest fully trained resolution (or the current one)."""
    done = [s.resolution for s in plan if kimg >= s.end_kimg]
    return done[-1] if done else phase_at(train_cfg, model_cfg, kimg).resolution


def export_metadata(kimg: float, run_hash: str, source: Any, metadata: dict[str, Any] | None) -> dict[str, Any]:
    meta = {"kimg": kimg, "params_hash": run_hash, **(metadata or {})}
    if source is not None:  # lineage: which weights this run was fine-tuned from
        meta["init_from"] = {"sha256": source.sha256, "kind": source.kind, "resolution": source.resolution}
    return meta


def export_run(run_dir: str | Path, out_dir: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
               metadata: dict[str, Any] | None = None) -> Path:
    """Export the G_ema of ``run_dir``'s newest checkpoint as ``Trainer.export`` would (same bytes)."""
    eff, source, expected_hash, plan = _run_plan(model_cfg, train_cfg)
    found = _newest_checked(run_dir, model_cfg, eff, expected_hash, plan)
    if found is None:
        raise CheckpointError(f"{run_dir} has no checkpoint to export; train it first")
    state, _ = found
    kimg = int(state["cur_nimg"]) / 1000.0
    res = export_resolution(plan, model_cfg, eff, kimg)
    return export_generator_state(state["G_ema"], model_cfg, out_dir, res,
                                  export_metadata(kimg, expected_hash, source, metadata))
