"""Device and precision helpers: which device, which autocast dtype, where fp32 must stay.

NVIDIA's habit for mixed precision, followed here: the convolutions run in the low
precision, while the statistics (mapping network, instance-norm statistics, minibatch
stddev), the losses and the R1 penalty stay fp32.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

AMP_MODES = ("none", "auto", "bf16", "fp16")


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


def normalize_amp(value: bool | str) -> str:
    """The ``train.amp`` mode; the old booleans map to ``false -> none`` and ``true -> auto``
    (bf16 on CUDA, fp32 elsewhere: what ``amp: true`` always did)."""
    if value is True:
        return "auto"
    if value is False:
        return "none"
    if value not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {list(AMP_MODES)} (or true/false), got {value!r}")
    return value


def amp_dtype(mode: bool | str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on ``device`` (None = fp32).

    ``auto`` is bf16 on a CUDA device that has it and fp32 everywhere else (on CPU autocast is
    slower and changes results); an explicit ``bf16``/``fp16`` is honoured on any device, so CPU
    tests can run the mixed-precision path.
    """
    mode = normalize_amp(mode)
    if mode == "none":
        return None
    if mode == "fp16":
        return torch.float16
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if mode == "bf16":
        if not bf16_ok:
            raise ValueError(f"train.amp: bf16 asked for, but {device} has no bf16; use amp: fp16 or none")
        return torch.bfloat16
    if device.type != "cuda":
        return None
    if not bf16_ok:
        warnings.warn("train.amp: auto: this GPU lacks bf16, training in fp32 (amp: fp16 is an option)", stacklevel=2)
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def fp32_region(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``x``'s device type (inputs must be cast to fp32 by the caller)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def pin_memory_available(device: torch.device) -> bool:
    """Page-locked host memory helps (and exists) only for copies to a CUDA device."""
    return device.type == "cuda" and torch.cuda.is_available()


COMPILE_RECOMPILE_LIMIT = 64  # graphs per forward: about 2 per stage (grad mode, update_w_avg)


def compile_forward(net: torch.nn.Module, spec: bool | str) -> torch.nn.Module:
    """``net`` under ``torch.compile`` as ``train.compile`` asks (``False``: ``net`` itself; ``True``:
    inductor; else a backend name). State dicts stay those of the plain module."""
    if spec is False:
        return net
    import torch._dynamo

    # Each stage (resolution, batch size) and grad mode is its own graph; the default limit (8)
    # would silently fall back to eager after a few stages.
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    # dynamic=False: shapes change only at stage boundaries, where a specialised graph is best.
    return torch.compile(net, backend="inductor" if spec is True else spec, dynamic=False)
