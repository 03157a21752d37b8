"""Checkpoints that describe themselves, written atomically; pickle-free export of the generator.

A training checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: nothing in it can execute code on load. It
carries the configs, the networks, both optimizers, the images-shown counter, the schedule
position and every RNG state, so resuming needs no flags and continues bit for bit.

The shipped generator is ``G_ema`` as ``generator.safetensors`` + ``generator.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylegan.config import DISCRIMINATOR_KEYS, ModelConfig, TrainConfig, from_dict, stable_dict
from stylegan.io import atomic_write, check_safetensors_fit, read_format_json, remove_stale_temp_files

__all__ = ["atomic_write", "remove_stale_temp_files"]  # re-exported: callers import them from here

CHECKPOINT_FORMAT = "pokegan-checkpoint"
GENERATOR_FORMAT = "pokegan-generator"
FORMAT_VERSION = 1
WEIGHTS_NAME = "generator.safetensors"
CONFIG_NAME = "generator.json"

# Train settings that only lengthen the schedule at its end: a finished run whose value is raised
# continues from its last checkpoint ("train longer") instead of starting over. Nothing in the
# trainer depends on the total length (lr is per resolution, the EMA ramp-up counts images
# shown so far), so training to N and then on to M is bit for bit training straight to M.
# final_kimg only adds images after the last stage's stabilisation; other schedule keys
# (fade_kimg, stab_kimg, max_resolution) move stage boundaries the run has already passed.
SCHEDULE_EXTENSION_KEYS = ("final_kimg",)


class CheckpointError(ValueError):
    """A checkpoint or exported generator is missing, corrupt or incompatible."""


# ---------------------------------------------------------------------------------------------
# Training checkpoints


def hashed_train_params(model_cfg: ModelConfig, train_cfg: TrainConfig, init_sha256: str | None = None) -> dict:
    """The train params that define a run: ``train_cfg.recipe`` (the runtime part is not a run's
    definition) without its schedule-extension keys, with ``init_from``'s path replaced by the
    source's content hash (a re-download elsewhere is the same run)."""
    skip = (*SCHEDULE_EXTENSION_KEYS, "init_from")
    train = {k: v for k, v in stable_dict(train_cfg.recipe).items() if k not in skip}
    # `null` means the model's resolution: spelling it out must not look like another run.
    train["max_resolution"] = train_cfg.max_resolution or model_cfg.max_resolution
    if train_cfg.init_from is not None:
        if init_sha256 is None:
            raise ValueError("params_hash of a fine-tuning run needs the source's init_sha256")
        train["init_from_sha256"] = init_sha256
    return train


def params_hash(model_cfg: ModelConfig, train_cfg: TrainConfig, init_sha256: str | None = None) -> str:
    """Hash of everything that defines what a run computes (the model config and the train recipe;
    ``final_kimg`` excluded, a fine-tuning run's source counted by its content hash ``init_sha256``)."""
    train = hashed_train_params(model_cfg, train_cfg, init_sha256)
    blob = json.dumps({"model": stable_dict(model_cfg), "train": train}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The code whose bytes define what a training run computes is the ``stylegan/training`` package,
# whole: dvc.yaml's train stage depends on that folder and the run key hashes its sources, so
# the two cannot drift. An orchestrator keys its run folders by this hash, so editing the model
# or the trainer retrains instead of resuming (or silently skipping to) checkpoints that older
# code wrote. The train stage's other library deps (config, checkpoint, io, sampling, shared,
# pretrained) are bookkeeping: editing one reruns the DVC stage, which resumes or skips.
TRAINING_PACKAGE = Path(__file__).resolve().parent / "training"


def training_sources() -> list[Path]:
    """The training package's Python sources, in a fixed order (bytecode and caches left out)."""
    return sorted(TRAINING_PACKAGE.rglob("*.py"))


def code_fingerprint() -> str:
    """A hash of the training package's sources (names relative to it, and bytes)."""
    h = hashlib.sha256()
    for path in training_sources():
        h.update(path.relative_to(TRAINING_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict (tensors, numbers, strings, lists, dicts only)."""
    state = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing or corrupt files.

    ``mmap``: tensors stay on disk until touched (reading a few small fields of a large file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a pokegan checkpoint "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); "
            "delete or replace it (a run resumes from its newest readable checkpoint)"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pokegan checkpoint")
    if state.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {state['version']}; this pokegan reads up to {FORMAT_VERSION}"
        )
    return state


def configs_from_checkpoint(state: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    model = from_dict(ModelConfig, state["model_config"], "model")
    return model, from_dict(TrainConfig, state["train_config"], "train")


def rolling_name(nimg: int) -> str:
    return f"ckpt-{nimg:09d}.pt"


def stage_name(resolution: int) -> str:
    return f"stage-{resolution}.pt"


def rolling_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(images shown, path)`` of the rolling checkpoints in ``folder``, oldest first."""
    out = []
    for p in Path(folder).glob("ckpt-*.pt"):
        digits = p.stem.split("-", 1)[1]
        if digits.isdigit():
            out.append((int(digits), p))
    return sorted(out)


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` rolling checkpoints (stage-final ones are never touched)."""
    keep = max(int(keep), 1)
    doomed = [p for _, p in rolling_checkpoints(folder)[:-keep]]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


# RNG states as tensors and plain types, so weights_only loading accepts them.


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "internal": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


# ---------------------------------------------------------------------------------------------
# Generator export (safetensors + JSON; no pickle anywhere)


def _generator_class() -> type:
    from stylegan.training.networks import Generator

    return Generator


def _discriminator_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(ModelConfig) if f.name in DISCRIMINATOR_KEYS}


def trim_generator_state(
    state: dict[str, torch.Tensor], cfg: ModelConfig, resolution: int
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and state dict of a generator built for ``resolution`` (higher blocks dropped)."""
    if resolution not in cfg.resolutions:
        raise CheckpointError(f"resolution {resolution} is not one of the model's {cfg.resolutions}")
    # G alone: the discriminator's keys go back to their defaults (stable_dict leaves them out of generator.json).
    small_cfg = replace(cfg, max_resolution=resolution, **_discriminator_defaults())
    wanted = _generator_class()(small_cfg).state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(
            f"generator state lacks {len(missing)} tensors needed at {resolution}x{resolution}: {missing[:5]}"
        )
    out = {}
    for k, v in wanted.items():
        if state[k].shape != v.shape:
            shape = tuple(state[k].shape)
            raise CheckpointError(f"{k}: shape {shape} does not fit a {resolution}x{resolution} generator")
        out[k] = state[k].detach().to("cpu").clone().contiguous()
    return small_cfg, out


def export_generator(
    G_ema: torch.nn.Module,
    out_dir: str | Path,
    resolution: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/generator.safetensors`` + ``generator.json`` for the trained ``resolution``.

    The exported generator is built for exactly that resolution (its ``img_resolution``),
    so samplers never see untrained higher blocks. ``metadata`` must be JSON-able.
    """
    return export_generator_state(G_ema.state_dict(), G_ema.cfg, out_dir, resolution, metadata)


def export_generator_state(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    resolution: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """``export_generator`` from a G_ema state dict (a checkpoint's), no network needed."""
    from safetensors.torch import save as st_save

    resolution = resolution or cfg.max_resolution
    small_cfg, tensors = trim_generator_state(state, cfg, resolution)
    out_dir = Path(out_dir)
    info = {
        "format": GENERATOR_FORMAT,
        "version": FORMAT_VERSION,
        "resolution": resolution,
        "model_config": stable_dict(small_cfg),
        "metadata": metadata or {},
    }
    # One metadata key only: safetensors keeps metadata in a Rust HashMap, so two keys come out in
    # a random order and the same weights would give different bytes (DVC hashes and the registry's
    # same-weights check depend on identical bytes).
    blob = st_save(tensors, metadata={GENERATOR_FORMAT: str(FORMAT_VERSION)})
    atomic_write(out_dir / WEIGHTS_NAME, lambda f: f.write(blob))
    text = json.dumps(info, indent=2, sort_keys=True).encode()
    atomic_write(out_dir / CONFIG_NAME, lambda f: f.write(text))
    return out_dir / WEIGHTS_NAME


def read_generator_info(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(weights path, generator.json contents)`` for an export folder or its .safetensors file."""
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(
            f"no exported generator at {path} (expected {WEIGHTS_NAME} + {CONFIG_NAME}; "
            "produce one with `pokegan train --export DIR` or stylegan.checkpoint.export_generator)"
        )
    if weights.suffix != ".safetensors":  # e.g. a training checkpoint or params.yaml passed by mistake
        raise CheckpointError(
            f"{path} is not an exported generator (a folder or .safetensors file); export a run's G_ema with "
            "`pokegan train --params PARAMS --run-dir RUN --export DIR` (a finished run trains nothing more)"
        )
    config = weights.with_name(CONFIG_NAME) if weights.name == WEIGHTS_NAME else weights.with_suffix(".json")
    if not config.is_file():
        raise FileNotFoundError(f"{weights} has no {config.name} next to it; re-export the generator")
    return weights, read_format_json(config, GENERATOR_FORMAT, "generator", "re-export the generator", CheckpointError)


def _check_weights_fit(weights: Path, cfg: ModelConfig) -> None:
    """Compare the safetensors header (names, dtypes, shapes, offsets, file size) with the network
    ``cfg`` describes, built on the meta device (no memory), before anything real is allocated.

    A generator.json edited to ask for a bigger network than its weights (or weights that claim
    more bytes than the file holds) fails here with a clear error instead of exhausting memory.
    """
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in _generator_class()(cfg).state_dict().items()}
    check_safetensors_fit(weights, wanted, CONFIG_NAME, "re-export the generator", CheckpointError)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load an exported generator (folder or .safetensors) in eval mode, no grads, no pickle.

    The config is validated (``stylegan.config.MODEL_LIMITS``) and the weights' header checked
    against it before the network is built, so a tampered generator.json cannot exhaust memory.
    """
    from safetensors.torch import load_file

    weights, info = read_generator_info(path)
    try:
        cfg = from_dict(ModelConfig, info.get("model_config"), "model")
    except ValueError as exc:
        raise CheckpointError(f"{weights.with_name(CONFIG_NAME)} has an invalid model_config: {exc}") from exc
    _check_weights_fit(weights, cfg)
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{weights} is corrupt ({type(exc).__name__}: {exc}); re-export the generator") from exc
    G = _generator_class()(cfg)
    try:
        G.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match its config: {exc}") from exc
    G.eval().requires_grad_(False)
    return G.to(device)
