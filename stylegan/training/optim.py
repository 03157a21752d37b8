"""The optimiser side of a step: Adam with its learning-rate multipliers, one gradient step over
every rank, and G_ema (the generator that is exported and sampled)."""

from __future__ import annotations

import torch

from stylegan.config import TrainConfig
from stylegan.training import distributed

# Buffers that a training step changes: G_ema copies them from G. Every other buffer (the const
# noise maps) never changes, so the EMA does not copy it.
EMA_FOLLOWED_BUFFERS = ("mapping.w_avg",)


def make_optimizer(net: torch.nn.Module, train_cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam over ``net``. The mapping network's 0.01 learning-rate multiplier lives in its layers
    (equalized lr); the noise strengths' multiplier (``train.noise_lr_mul``) rides in their param
    group as ``lr_mul``, which each step applies to the phase's lr."""
    # On CUDA the fused Adam: one kernel, step counters on the device, and GradScaler hands it
    # the scale without a host read. Elsewhere torch's default (foreach) implementation.
    fused = True if device.type == "cuda" else None
    is_noise = [".noise" in n and n.endswith(".weight") for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    groups = [{"params": [p for p, noise in zip(params, is_noise, strict=True) if not noise], "lr_mul": 1.0}]
    if any(is_noise):
        groups.append({"params": [p for p, noise in zip(params, is_noise, strict=True) if noise],
                       "lr_mul": train_cfg.noise_lr_mul})
    return torch.optim.Adam(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.eps, fused=fused)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mul", 1.0)


def gradient_step(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  loss: torch.Tensor, world_size: int, extra: list[torch.Tensor] | None = None) -> None:
    """Backward ``loss`` into ``net`` (scaled: fp16), average over ranks, step (the scaler skips a
    step whose gradients overflowed). One flattened all-reduce per network (StyleGAN2-ADA's way;
    DDP's hooks and R1's double backward mix poorly, pytorch 63812) of means over each rank's rows
    is the global batch's mean; ``extra`` tensors (G's ``w_avg``, moved by this rank's mean w) ride
    along."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.average_gradients(net.parameters(), world_size, extra=extra or [])
    scaler.step(opt)
    scaler.update()


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, train_cfg: TrainConfig, cur_nimg: int,
               batch_size: int) -> None:
    """G_ema <- G + beta (G_ema - G), beta for a half-life of ``train.ema_kimg`` thousand images."""
    ema_nimg = train_cfg.ema_kimg * 1000
    if train_cfg.ema_rampup is not None:
        # Early in a run a long half-life would keep G_ema at its random init (StyleGAN2-ADA's ramp-up).
        ema_nimg = min(ema_nimg, cur_nimg * train_cfg.ema_rampup)
    beta = 0.5 ** (batch_size / ema_nimg) if ema_nimg > 0 else 0.0
    # One multi-tensor kernel (lerp's weight >= 0.5 branch makes beta = 0 an exact copy).
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)
    # Buffers: only those a step changes (w_avg follows G directly); const noise never changes.
    ema_bufs, bufs = dict(G_ema.named_buffers()), dict(G.named_buffers())
    torch._foreach_copy_([ema_bufs[n] for n in EMA_FOLLOWED_BUFFERS], [bufs[n] for n in EMA_FOLLOWED_BUFFERS])
