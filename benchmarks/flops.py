"""FLOPs of one training step (``torch.utils.flop_counter``) and device peaks for MFU.

Shared by ``train_throughput.py`` and ``gpu_check.py``. FLOPs count matmuls and convolutions
(a multiply-add is 2 FLOPs), forward, backward and R1's double backward, as
``FlopCounterMode`` does; elementwise work is not counted, as in the usual MFU figures.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

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


def matmul_tflops(device: torch.device, n: int = 1024, seconds: float = 0.5) -> float:
    """Achieved fp32 TFLOP/s of square matmuls on ``device`` (the CPU's practical peak)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return 2 * n**3 * reps / elapsed / 1e12
