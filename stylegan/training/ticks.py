"""Reporting: the tick meter (step stats summed on the device, read once per tick with one
``tolist()``, averaged over the ranks, handed to the callbacks' ``on_tick``; nothing reads the
device inside a step) and the snapshot grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from stylegan.config import TrainConfig
from stylegan.sampling import generate, image_grid
from stylegan.training import distributed
from stylegan.training.augment import AdaController
from stylegan.training.schedule import Phase


class TickMeter:
    """Sums a tick's step stats and emits them through ``notify("on_tick", stats)``."""

    def __init__(self, tick_kimg: float, world_size: int, notify: Callable[..., None]) -> None:
        self.size = max(round(tick_kimg * 1000), 1)  # images per tick
        self.world_size = world_size
        self.notify = notify
        self.start(0)

    def start(self, cur_nimg: int) -> None:
        self.next_nimg = (cur_nimg // self.size + 1) * self.size
        self.start_time = time.perf_counter()
        self.start_nimg = cur_nimg
        self.steps = 0
        self.r1_steps = 0
        self.sums: dict[str, torch.Tensor | float] = {}  # stat -> running sum, a device tensor

    def accumulate(self, stats: dict[str, torch.Tensor], r1_applied: bool) -> None:
        self.steps += 1
        self.r1_steps += int(r1_applied)
        for k, v in stats.items():
            self.sums[k] = v if k not in self.sums else self.sums[k] + v  # on the device: no sync

    def due(self, cur_nimg: int) -> bool:
        return cur_nimg >= self.next_nimg

    def _read_sums(self) -> dict[str, float]:
        """The tick's sums as floats: one device-to-host read for all of them."""
        names = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        out = {k: float(v) for k, v in self.sums.items() if k not in names}
        if names:
            # Each rank's losses are means over its rows: the mean over ranks is the global batch's.
            stacked = torch.stack([self.sums[k].float() for k in names])  # type: ignore[union-attr]
            out.update(zip(names, distributed.all_reduce_mean(stacked, self.world_size).tolist(), strict=True))
        return {"loss_G": 0.0, "loss_D": 0.0, "r1": 0.0, **out}

    def emit(self, phase: Phase, cur_nimg: int, ada: AdaController | None) -> None:
        """Report the tick that ends at ``cur_nimg`` and start the next."""
        sums = self._read_sums()  # waits for the device: the tick's time includes all its steps
        secs = time.perf_counter() - self.start_time
        n = max(self.steps, 1)
        stats: dict[str, Any] = {
            "kimg": cur_nimg / 1000.0,
            "resolution": phase.resolution,
            "alpha": phase.alpha,
            "lr": phase.lr,
            "batch_size": phase.batch_size,
            "loss_G": sums["loss_G"] / n,
            "loss_D": sums["loss_D"] / n,
            # With lazy R1 the penalty exists on every r1_interval-th step; averaging the zeros
            # of the other steps in would report it 1/r1_interval times too small.
            "r1": sums["r1"] / max(self.r1_steps, 1),
            "images_per_sec": (cur_nimg - self.start_nimg) / max(secs, 1e-9),
            "sec_per_tick": secs,
            "stage": phase.stage.index,
            "augment_p": 0.0,
        }
        if ada is not None:  # p and r_t live on the device: one read per tick, here
            stats["augment_p"], stats["ada_rt"] = torch.stack([ada.p, ada.rt]).tolist()
        self.notify("on_tick", stats)
        self.start(cur_nimg)


def snapshot_grid(G_ema: torch.nn.Module, train_cfg: TrainConfig, resolution: int, alpha: float,
                  device: torch.device) -> Image.Image:
    """G_ema's images of ``train.grid_seeds`` (const noise) as one grid, about twice as wide as high."""
    # Sampling must not shift the training RNG (rank 0 alone samples: the ranks' streams must agree).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        imgs = generate(G_ema, seeds=train_cfg.grid_seeds, truncation_psi=train_cfg.truncation_psi,
                        noise_mode="const", resolution=resolution, alpha=alpha)
    return image_grid(imgs, cols=min(len(imgs), max(1, math.ceil(math.sqrt(len(imgs) * 2)))))
