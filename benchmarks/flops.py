"""FLOPs of one training step (``torch.utils.flop_counter``) and device peaks for MFU.

Shared by ``train_throughput.py`` and ``gpu_check.py``. FLOPs count matmuls and convolutions
(a multiply-add is 2 FLOPs), forward, backward and R1's double backward, as
``FlopCounterMode`` does; elementwise work is not counted, as in the usual MFU figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:  # not at run time: train_throughput imports this before --library picks the stylegan
    from stylegan.config import ModelConfig

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() in this order; V100 has no bf16, its fp16 peak stands in.
KNOWN_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
    ("V100", 125.0),
)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break the
    ``autograd.grad(create_graph=True)`` of R1 (torch 2.13 raises "A leaf node was passed to
    _will_engine_execute_node"). Only the global total is needed."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` (eager ops only: compiled graphs bypass the counter)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def train_step_flops(trainer: Any) -> float:
    """FLOPs of one ``trainer.train_step()`` (D step + G step), averaged over ``r1_interval``
    consecutive steps so that lazy R1 counts at its real rate. Runs those steps (they train)."""
    k = max(1, int(trainer.train_cfg.r1_interval))
    return sum(count_flops(trainer.train_step) for _ in range(k)) / k


@dataclass(frozen=True)
class _Layer:
    """One matmul / convolution of a network, for the hand count."""

    name: str
    flops: float  # forward FLOPs per image
    weighted: bool = True  # has trainable weights (False: the fixed blur kernel), so backward computes dW
    on_data: bool = False  # its input is data (z, images), which needs no gradient in a plain backward


def _conv(name: str, size: int, c_in: int, c_out: int, k: int, weighted: bool = True, on_data: bool = False) -> _Layer:
    """A kxk conv at size x size positions: its output map, or for a transposed conv its input map
    (as the counter counts; padding taps included)."""
    return _Layer(name, 2.0 * size * size * k * k * c_in * c_out, weighted, on_data)


def _blur(name: str, size: int, c: int) -> _Layer:
    # Depthwise 3x3 conv: cheap (1/C of a 3x3 conv), but it is a convolution, so the counter sees it.
    return _Layer(name, 2.0 * size * size * 9 * c, weighted=False)


def _g_layers(cfg: ModelConfig, resolution: int, fading: bool, mixing: bool) -> list[_Layer]:
    """G's matmuls / convs at ``resolution``, mirroring networks.Generator."""
    hidden = cfg.mapping_width or cfg.w_dim
    widths = [cfg.z_dim] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
    layers: list[_Layer] = []
    # Style mixing draws a second z for every sample and maps it too, whatever the coin says.
    for p in range(2 if mixing else 1):
        for i in range(cfg.mapping_layers):
            layers.append(_Layer(f"mapping{p}.fc{i}", 2.0 * widths[i] * widths[i + 1], on_data=i == 0))
    r = 4
    while r <= resolution:
        c = cfg.channels(r)
        layers += [_Layer(f"b{r}.adain{j}.affine", 2.0 * cfg.w_dim * 2 * c) for j in (0, 1)]
        if r > 4:
            c_in = cfg.channels(r // 2)
            if cfg.fused_at(r):  # one stride-2 transposed conv, 4x4 kernel, over the r/2 input
                layers.append(_conv(f"b{r}.conv0", r // 2, c_in, c, 4))
            else:  # nearest x2, then 3x3 at r
                layers.append(_conv(f"b{r}.conv0", r, c_in, c, 3))
            if cfg.blur:
                layers.append(_blur(f"b{r}.blur", r, c))
        layers.append(_conv(f"b{r}.conv1", r, c, c, 3))
        r *= 2
    layers.append(_conv(f"b{resolution}.torgb", resolution, cfg.channels(resolution), cfg.img_channels, 1))
    if fading:  # the old path: the previous block's ToRGB, upsampled
        half = resolution // 2
        layers.append(_conv(f"b{half}.torgb", half, cfg.channels(half), cfg.img_channels, 1))
    return layers


def _d_layers(cfg: ModelConfig, resolution: int, fading: bool) -> list[_Layer]:
    """D's matmuls / convs at ``resolution``, mirroring networks.Discriminator."""
    c_top = cfg.channels(resolution)
    layers = [_conv(f"b{resolution}.fromrgb", resolution, cfg.img_channels, c_top, 1, on_data=True)]
    if fading:  # the old path: the 2x2-pooled images into the next block's FromRGB
        half = resolution // 2
        layers.append(_conv(f"b{half}.fromrgb", half, cfg.img_channels, cfg.channels(half), 1, on_data=True))
    r = resolution
    while r > 4:
        c, c_out = cfg.channels(r), cfg.channels(r // 2)
        layers.append(_conv(f"b{r}.conv0", r, c, c, 3))
        if cfg.blur:
            layers.append(_blur(f"b{r}.blur", r, c))
        if cfg.fused_at(r):  # one stride-2 conv, 4x4 kernel, onto r/2
            layers.append(_conv(f"b{r}.conv1", r // 2, c, c_out, 4))
        else:  # 3x3 at r, then 2x2 average pooling
            layers.append(_conv(f"b{r}.conv1", r, c, c_out, 3))
        r //= 2
    c4, c_dense = cfg.channels(4), cfg.channels(2)  # the dense layer has the stage-0 width
    layers += [
        _conv("b4.conv", 4, c4 + cfg.mbstd_num_features, c4, 3),  # + the minibatch-stddev maps
        _Layer("b4.fc", 2.0 * 16 * c4 * c_dense),
        _Layer("b4.out", 2.0 * c_dense),
    ]
    return layers


def hand_step_flops(
    model_cfg: ModelConfig,
    resolution: int,
    batch_size: int,
    r1_interval: int = 1,
    *,
    r1: bool = True,
    fading: bool = False,
    style_mixing: bool | None = None,
) -> dict[str, float]:
    """Analytic FLOPs of one logistic-loss ``Trainer.train_step()`` (D step + G step) at
    ``resolution``, from the layer shapes of ``model_cfg`` alone (nothing is run), as a check on
    ``train_step_flops``. Returns ``total`` and its breakdown (per-image forwards, the steps, R1).

    Convention as ``FlopCounterMode``: a multiply-add is 2 FLOPs; only matmuls and convolutions
    count (biases, activations, noise, AdaIN's normalisation, minibatch stddev, resampling and
    EMA do not), but the [1,2,1] blur is a (depthwise) convolution, so it counts. Every layer's
    backward costs its forward once for the gradient to its input and once for its weights, each
    only where autograd needs it. What one step runs (training.py):

    - D step: G forward under no_grad (2 mapping passes with style mixing, whose second latent is
      drawn whatever the coin says); D forward + backward on the fakes and on the reals, with
      weight grads but no input grad at the first layer (detached fakes, plain reals).
    - R1 (every ``r1_interval``-th step, averaged over the interval; ``r1=False``: r1_gamma 0):
      the reals' pass instead takes a forward, the gradient to the images (inputs only, with
      graph), and a backward through both graphs: ``loss_D.backward()`` over the forward graph
      (weights, and the images, now a leaf that requires grad) and the double backward of the
      gradient graph (per layer: the gradient to its incoming gradient, except D's last layer
      whose incoming gradient is a constant, and to its kernel, which torch computes even for the
      blur's fixed one).
    - G step: G forward + backward (weight grads everywhere; no input grad into the mapping's
      first layer), D forward + backward to its input only (``D.requires_grad_(False)``).

    Roughly, per image: D step Gf + 2 x 3Df, G step 3Gf + 2Df, R1 +3Df on the steps that run
    it. Assumes alpha = 1 (``fading=True``: the previous resolution's ToRGB / FromRGB run too),
    no augmentation, and the logistic loss (not WGAN-GP). It matches the counter to the FLOP
    (tests/test_flops.py). The paper model at batch 32, R1 every 4th step: 11.1, 14.9 and 18.6
    TFLOP per step at 64, 128 and 256.
    """
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    mixing = model_cfg.style_mixing_prob > 0 if style_mixing is None else style_mixing
    g = _g_layers(model_cfg, resolution, fading, mixing)
    d = _d_layers(model_cfg, resolution, fading)
    g_fwd = sum(x.flops for x in g)
    d_fwd = sum(x.flops for x in d)
    # Backward with weight grads, and input grads wherever the input is not data.
    g_bwd = sum(x.flops * (x.weighted + (not x.on_data)) for x in g)
    d_bwd = sum(x.flops * (x.weighted + (not x.on_data)) for x in d)
    d_bwd_input = d_fwd  # the G step: input grads only, down to the (generated) images
    d_plain = d_fwd + d_bwd
    grad_to_images = d_fwd  # autograd.grad(..., reals): input grads only, first layer included
    backward_forward_graph = sum(x.flops * (x.weighted + 1) for x in d)
    # The double backward of a conv's input gradient computes its kernel's gradient even for the
    # blur's fixed one (torch 2.13's convolution double backward): work done, so counted.
    double_backward = sum(2 * x.flops for x in d) - d[-1].flops
    d_r1 = d_fwd + grad_to_images + backward_forward_graph + double_backward
    n = float(batch_size)
    d_step = n * (g_fwd + 2 * d_plain)
    r1_extra = n * (d_r1 - d_plain) / max(1, r1_interval) if r1 else 0.0
    g_step = n * (g_fwd + g_bwd + d_fwd + d_bwd_input)
    mapping = sum(x.flops for x in g if x.name.startswith("mapping0."))
    return {
        "total": d_step + r1_extra + g_step,
        "G_forward_per_image": g_fwd,  # mapping included (both passes with style mixing)
        "D_forward_per_image": d_fwd,
        "mapping_forward_per_image": mapping,  # one pass (G's forward has two with style mixing)
        "blur_forward_per_image": sum(x.flops for x in g + d if x.name.endswith(".blur")),
        "D_step": d_step,  # without R1
        "R1_per_step": r1_extra,  # R1's extra over a plain reals' pass, averaged over r1_interval
        "R1_step_extra": n * (d_r1 - d_plain) if r1 else 0.0,  # on the steps that run it
        "G_step": g_step,
    }


def device_peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) for MFU: the override, the table, or on CPU a measured
    fp32 matmul rate; (None, reason) for an unknown GPU."""
    if override:
        return float(override), "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in KNOWN_PEAK_TFLOPS:
            if key.lower() in name.lower():
                return peak, f"bf16 dense data-sheet peak of {key}"
        return None, f"unknown GPU {name!r}: pass --peak-tflops (its dense bf16 TFLOP/s)"
    return matmul_tflops(device), "measured fp32 matmul rate of this CPU (no data-sheet peak)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, seconds: float = 0.5
) -> float:
    """Achieved TFLOP/s of n x n ``dtype`` matmuls on ``device``: the practical peak (fp32 on a
    CPU; bf16 on a GPU, its tensor-core rate). ``n`` defaults to 1024 on CPU and 8192 on CUDA,
    large enough there to keep the tensor cores busy."""
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: library init, kernel selection, clocks
        torch.matmul(a, b, out=out)
    # CUDA launches return at once: synchronize before reading the clock, and launch a few
    # matmuls per read so that the waits cost little.
    chunk = 8 if device.type == "cuda" else 1
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(chunk):
            torch.matmul(a, b, out=out)
        reps += chunk
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return 2 * n**3 * reps / elapsed / 1e12


def measured_peak_tflops(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int | None = None, seconds: float = 1.0
) -> tuple[float, str]:
    """(TFLOP/s, what it is) of ``dtype`` matmuls measured on ``device`` now: the MFU reference
    that this device reaches in practice, next to the data-sheet peak of ``device_peak_tflops``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    dtype_name = str(dtype).removeprefix("torch.")
    return matmul_tflops(device, dtype, n, seconds), f"measured {dtype_name} matmul rate of {name}"
