"""Fine-tuning: start a new run from another run's weights (``train.init_from``).

A source is a local path: a training checkpoint (``.pt``: G, G_ema, D and w_avg) or an exported
generator (a folder with ``generator.safetensors`` + ``generator.json``, or the file itself:
G_ema only, which then initialises both G and G_ema, and D starts from random weights). A
registry URI (``models:/NAME@ALIAS``) is resolved to an export folder by the train flow, which
owns MLflow; the library only ever sees the path. A shipped model (``pretrained:NAME``) is its
folder in the repo, sha256-checked against ``pretrained/index.json`` first.

The new run's schedule starts at the source's resolution: ``start_resolution`` is replaced by
it, so the run first trains ``stab_kimg`` there without a fade (the source is fully faded in),
then grows on, fading in each higher resolution up to ``train.max_resolution`` as usual. Images
shown, the step counter, the optimizers, the RNGs and ADA's p start fresh: kimg counts the
fine-tuning only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from stylegan import pretrained
from stylegan.checkpoint import CheckpointError, load_checkpoint, read_generator_info
from stylegan.config import ModelConfig, TrainConfig, from_dict
from stylegan.io import sha256_file

# Model keys that decide tensor shapes; a source must agree on all of them (max_resolution aside).
ARCHITECTURE_KEYS = ("z_dim", "w_dim", "mapping_layers", "mapping_width", "img_channels", "fmap_base", "fmap_max",
                     "fmap_min", "mbstd_num_features", "blur")


@dataclass(frozen=True)
class InitSource:
    path: Path
    kind: Literal["checkpoint", "export"]
    resolution: int  # highest resolution the source is fully trained at (where the new run starts)
    model_config: ModelConfig
    sha256: str  # of the source file's bytes (an export's equals the registry's generator.sha256 tag)
    metadata: dict[str, Any] = field(default_factory=dict)  # export metadata / checkpoint kimg, params_hash


def read_init_source(path: str | Path) -> InitSource:
    """Describe a fine-tuning source (reads configs and hashes, not the weights of an export)."""
    if pretrained.is_pretrained(str(path)):
        path = pretrained.folder(str(path))  # unknown name or a damaged file: refused here
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"train.init_from {str(path)!r} does not exist; give a training checkpoint (.pt), an export folder "
            "(generator.safetensors + generator.json), pretrained:NAME (`pokegan models`), or, through the "
            "train flow, models:/NAME@ALIAS"
        )
    if p.is_file() and p.suffix == ".pt":
        state = load_checkpoint(p)
        model_cfg = from_dict(ModelConfig, state["model_config"], "model")
        cur = int(state.get("cur_resolution") or 0)
        if cur == 0:
            raise CheckpointError(f"{p} has not trained a single step; nothing to fine-tune from")
        # Mid-fade the new block is half-trained: start from the resolution below it.
        res = cur if float(state.get("alpha", 1.0)) >= 1.0 else cur // 2
        meta = {"kimg": float(state.get("kimg", 0.0)), "params_hash": state.get("params_hash")}
        return InitSource(p, "checkpoint", res, model_cfg, sha256_file(p), meta)
    weights, info = read_generator_info(p)
    model_cfg = from_dict(ModelConfig, info["model_config"], "model")
    return InitSource(weights.parent if p.is_dir() else weights, "export", int(info["resolution"]), model_cfg,
                      sha256_file(weights), dict(info.get("metadata") or {}))


def check_architecture(model_cfg: ModelConfig, source: InitSource) -> None:
    """A clear error when the source's networks cannot be loaded into ``model_cfg``'s."""
    theirs = source.model_config
    diff = [f"{k}: source {getattr(theirs, k)!r}, config {getattr(model_cfg, k)!r}" for k in ARCHITECTURE_KEYS
            if getattr(theirs, k) != getattr(model_cfg, k)]
    if diff:
        raise CheckpointError(
            f"train.init_from {source.path} has another architecture than the model config ({'; '.join(diff)}); "
            "set the model section to the source's values (its generator.json / checkpoint model_config)"
        )
    if source.resolution > model_cfg.max_resolution:
        raise CheckpointError(
            f"train.init_from {source.path} is trained at {source.resolution}x{source.resolution}, above "
            f"model.max_resolution {model_cfg.max_resolution}; raise model.max_resolution"
        )


def finetune_train_config(train_cfg: TrainConfig, model_cfg: ModelConfig, source: InitSource) -> TrainConfig:
    """``train_cfg`` with the schedule starting at the source's resolution (see the module doc)."""
    check_architecture(model_cfg, source)
    top = train_cfg.max_resolution or model_cfg.max_resolution
    if source.resolution > top:
        raise CheckpointError(
            f"train.init_from {source.path} is trained at {source.resolution}x{source.resolution}, above "
            f"train.max_resolution {top}; raise train.max_resolution to at least {source.resolution}"
        )
    return dataclasses.replace(train_cfg, start_resolution=source.resolution)


def effective_train_config(train_cfg: TrainConfig, model_cfg: ModelConfig) -> tuple[TrainConfig, InitSource | None]:
    """The schedule a Trainer will run for ``train_cfg`` (changed only by ``init_from``) and the source."""
    if train_cfg.init_from is None:
        return train_cfg, None
    source = read_init_source(train_cfg.init_from)
    return finetune_train_config(train_cfg, model_cfg, source), source


def _load_partial(net: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, source: InitSource) -> None:
    """Copy every tensor the source has into ``net``; only blocks above the source's resolution may be missing."""
    own = net.state_dict()
    extra = sorted(set(tensors) - set(own))
    bad = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in tensors
           if k in own and tensors[k].shape != own[k].shape]
    if extra or bad:
        raise CheckpointError(
            f"train.init_from {source.path}: its {what} does not fit the networks of the model config "
            f"({'unexpected ' + ', '.join(extra[:3]) if extra else ''}{'; ' if extra and bad else ''}"
            f"{'shape ' + ', '.join(bad[:3]) if bad else ''}); set the model section to the source's values"
        )
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)


def apply_init(
    source: InitSource,
    *,
    G: torch.nn.Module,  # trained generator; gets the source's G (an export's G_ema)
    G_ema: torch.nn.Module,  # gets the source's G_ema
    D: torch.nn.Module,  # gets the source's D when it has one, else stays as initialised
) -> bool:
    """Load the source's weights (w_avg included: it is a buffer of G's mapping). Returns whether D was loaded."""
    if source.kind == "export":
        from safetensors.torch import load_file

        weights = source.path / "generator.safetensors" if source.path.is_dir() else source.path
        try:
            tensors = load_file(str(weights), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{weights} is corrupt ({type(exc).__name__}: {exc}); re-export it") from exc
        _load_partial(G, tensors, "generator", source)
        _load_partial(G_ema, tensors, "generator", source)
        return False
    state = load_checkpoint(source.path)
    _load_partial(G, state["G"], "G", source)
    _load_partial(G_ema, state["G_ema"], "G_ema", source)
    _load_partial(D, state["D"], "D", source)
    return True
