"""Differentiable augmentation of everything D sees, and the ADA controller that tunes its strength.

Karras et al. 2020 (StyleGAN2-ADA): when every image D sees -- reals, fakes, and the reals of
the R1 pass -- goes through the same random transforms, each applied with probability
``p < ~0.8``, D cannot tell augmented data from the data itself and G still learns the clean
distribution, while D overfits a small dataset far later. ``AdaController`` raises ``p`` while
D is too sure about the reals (the overfitting heuristic ``r_t = E[sign(D(x_real))]``) and lowers
it when it is not.

Everything here is a batched tensor op on the images' device (gather, where, a 3x4 colour
matrix per image, a mask): differentiable twice (R1 backpropagates through it into D), no
Python loop over images, no host sync. Random draws come from a ``torch.Generator`` the caller
passes in, and the same number is drawn whatever ``p`` is, so the same generator state gives
the same batch and a checkpointed state resumes exactly.

Hand-written rather than kornia: the ops D needs are a few lines each, kornia would be a
dependency of the library (which keeps to torch/numpy/pillow), and its per-op random
parameter objects draw from the global RNG, which the trainer's exact resume cannot own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from stylegan.config import AUGMENT_OPS

if TYPE_CHECKING:
    from stylegan.config import TrainConfig

# Operation names, in the order they are applied (geometric, then colour, then cutout).
OPS = AUGMENT_OPS
DEFAULT_OPS = OPS

# Strengths of StyleGAN2-ADA's defaults (augment.py: xint_max 0.125, brightness_std 0.2,
# contrast_std 0.5, saturation_std 1, hue_max 1, cutout_size 0.5).
TRANSLATE_MAX = 0.125  # of the image side, integer pixels
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5  # log2 of the contrast factor
SATURATION_STD = 1.0  # log2 of the saturation factor
HUE_MAX = 1.0  # fraction of a half turn around the luma axis
CUTOUT_SIZE = 0.5  # of the image side


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Indices mirrored into ``[0, size)`` (reflect padding without repeating the edge)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


class AugmentPipe(torch.nn.Module):
    """Random, differentiable, batched transforms of images in [-1, 1], each with probability ``p``."""

    def __init__(
        self,
        *,
        ops: tuple[str, ...] | list[str] = DEFAULT_OPS,  # which transforms (subset of OPS)
    ) -> None:
        super().__init__()
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; choose from {list(OPS)}")
        self.ops = tuple(o for o in OPS if o in ops)

    # Uniform numbers each op draws per image (one (N, total) draw per call: fewer kernel launches).
    _DRAWS: ClassVar[dict[str, int]] = {"xflip": 1, "rotate90": 2, "translate": 3, "brightness": 2, "contrast": 2,
                                        "saturation": 2, "hue": 2, "cutout": 3}

    def forward(
        self,
        x: torch.Tensor,  # (N, C, H, W) images in [-1, 1]; square
        p: float | torch.Tensor,  # probability of each transform per image (a 0-dim tensor keeps it on the device)
        generator: torch.Generator | None = None,  # the source of every random draw (None = global RNG)
        shard: tuple[int, torch.Tensor] | None = None,  # (global batch, this rank's rows); None = x is all of it
    ) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[2] == x.shape[3], f"expected square (N, C, H, W) images, got {tuple(x.shape)}"
        N, C, H, W = x.shape
        dev = x.device
        p_t = torch.as_tensor(p, dtype=torch.float32, device=dev)
        total = sum(self._DRAWS[o] for o in self.ops)
        gdev = generator.device if generator is not None else dev
        if shard is None:
            u_all = torch.rand(N, total, generator=generator, device=gdev).to(dev)
        else:
            # Draw for the global batch and keep this rank's rows: N processes augment exactly
            # what one process with the same global batch would.
            B, rows = shard
            u_all = torch.rand(B, total, generator=generator, device=gdev).to(dev)[rows.to(dev)]
            assert u_all.shape[0] == N, f"shard rows {u_all.shape[0]} != batch {N}"
        cols = iter(range(total))

        def draw(k: int = 1) -> torch.Tensor:
            idx = [next(cols) for _ in range(k)]
            return u_all[:, idx[0]] if k == 1 else u_all[:, idx[0] : idx[-1] + 1]

        def chosen(u: torch.Tensor) -> torch.Tensor:
            return u < p_t

        if "xflip" in self.ops:
            x = torch.where(chosen(draw()).view(N, 1, 1, 1), x.flip(3), x)
        if "rotate90" in self.ops:
            u, k = draw(), draw()
            turns = torch.where(chosen(u), 1 + (k * 3).long().clamp(max=2), torch.zeros_like(u, dtype=torch.long))
            out = x
            for t in (1, 2, 3):
                out = torch.where((turns == t).view(N, 1, 1, 1), torch.rot90(x, t, dims=(2, 3)), out)
            x = out
        if "translate" in self.ops:
            u, t = draw(), draw(2)
            # Integer shifts in [-max, max] pixels, reflect padding (as ADA's xint).
            shift = torch.round((t * 2 - 1) * (TRANSLATE_MAX * W)).long()
            shift = shift * chosen(u).view(N, 1)
            iy = _reflect(torch.arange(H, device=dev).view(1, H) - shift[:, 1:2], H)  # (N, H)
            ix = _reflect(torch.arange(W, device=dev).view(1, W) - shift[:, 0:1], W)  # (N, W)
            x = x.gather(2, iy.view(N, 1, H, 1).expand(N, C, H, W))
            x = x.gather(3, ix.view(N, 1, 1, W).expand(N, C, H, W))
        colour = [o for o in ("brightness", "contrast", "saturation", "hue") if o in self.ops]
        if colour:
            draws = {o: (draw(), draw()) for o in colour}
            if C == 3:
                x = self._colour(x, draws, chosen)
        if "cutout" in self.ops:
            u, c = draw(), draw(2)
            cy = torch.where(chosen(u), c[:, 1], torch.full_like(u, -10.0))  # off-image centre = no hole
            cx = c[:, 0]
            gy = (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) / H
            gx = (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) / W
            inside_y = (gy.view(1, H) - cy.view(N, 1)).abs() < CUTOUT_SIZE / 2
            inside_x = (gx.view(1, W) - cx.view(N, 1)).abs() < CUTOUT_SIZE / 2
            hole = inside_y.view(N, 1, H, 1) & inside_x.view(N, 1, 1, W)
            x = x * (~hole).to(x.dtype)  # 0 = mid grey in [-1, 1], as ADA
        return x

    @staticmethod
    def _colour(x: torch.Tensor, draws: dict[str, tuple[torch.Tensor, torch.Tensor]], chosen: Any) -> torch.Tensor:
        """One 3x4 affine colour matrix per image (ADA's formulation), applied in one batched matmul."""
        N, k = x.shape[0], _constants(x.device)
        eye = k.eye4.expand(N, 4, 4)
        M = eye
        luma_outer = k.luma_outer  # projection onto the grey axis
        for op, (u, r) in draws.items():
            on = chosen(u).view(N, 1, 1)
            if op == "brightness":
                b = (_normal(r) * BRIGHTNESS_STD * on.view(N)).view(N, 1)
                M = torch.cat([M[:, :3, :3], M[:, :3, 3:] + b.view(N, 1, 1).expand(N, 3, 1)], 2)
                M = torch.cat([M, eye[:, 3:]], 1)
                continue
            if op == "contrast":
                s = torch.exp2(_normal(r) * CONTRAST_STD)
                T = torch.diag_embed(torch.stack([s, s, s, torch.ones_like(s)], 1))
            elif op == "hue":
                T = _rotate_around_grey((r * 2 - 1) * math.pi * HUE_MAX)
            else:  # saturation: scale the part of the colour orthogonal to grey
                s = torch.exp2(_normal(r) * SATURATION_STD).view(N, 1, 1)
                T = luma_outer + (k.eye4 - luma_outer) * s
                T = torch.cat([T[:, :3], eye[:, 3:]], 1)
            M = torch.where(on, T, eye) @ M
        flat = x.flatten(2)  # (N, 3, H*W)
        out = torch.baddbmm(M[:, :3, 3:].to(x.dtype), M[:, :3, :3].to(x.dtype), flat)
        return out.view_as(x)


def _normal(u: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers from uniform ones (inverse CDF), so every op draws uniforms only."""
    return math.sqrt(2) * torch.erfinv(u.clamp(1e-6, 1 - 1e-6) * 2 - 1)


_K = 1 / math.sqrt(3)
_CROSS = ((0.0, -_K, _K), (_K, 0.0, -_K), (-_K, _K, 0.0))  # cross-product matrix of the grey axis


class _Constants(NamedTuple):
    eye3: torch.Tensor
    eye4: torch.Tensor
    luma_outer: torch.Tensor  # projection onto the grey axis (4x4)
    cross: torch.Tensor  # _CROSS
    cross_sq: torch.Tensor  # _CROSS @ _CROSS
    last_row: torch.Tensor  # (1, 1, 4) homogeneous row of a colour matrix


_CONSTANTS: dict[tuple[torch.device, torch.dtype], _Constants] = {}


def _constants(dev: torch.device) -> _Constants:
    """The colour ops' constant tensors, built once per device: a ``torch.tensor`` from Python
    numbers is a blocking host-to-device copy, 9-12 a step on CUDA if made per call.

    Built on ``dev`` with the arithmetic the per-call code had (``/ sqrt(3)``, ``outer``, ``K @ K``
    on the device), so the values are those bits on every device. A module-level cache rather
    than module buffers: nothing enters a state dict, and the pipe needs no ``.to(device)``.
    """
    key = (dev, torch.get_default_dtype())
    k = _CONSTANTS.get(key)
    if k is None:
        # Plain tensors even if the first call is under inference_mode: an inference tensor could
        # not enter a later step's autograd graph.
        with torch.inference_mode(False), torch.no_grad():
            luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev) / math.sqrt(3)
            cross = torch.tensor(_CROSS, device=dev)
            k = _Constants(
                eye3=torch.eye(3, device=dev),
                eye4=torch.eye(4, device=dev),
                luma_outer=torch.outer(luma, luma),
                cross=cross,
                cross_sq=cross @ cross,
                last_row=torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], device=dev),
            )
        _CONSTANTS[key] = k
    return k


def _rotate_around_grey(theta: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4) rotations by ``theta`` around the (1, 1, 1) axis (Rodrigues' formula)."""
    N, k = theta.shape[0], _constants(theta.device)
    c, s = torch.cos(theta).view(N, 1, 1), torch.sin(theta).view(N, 1, 1)
    R = k.eye3 + s * k.cross + (1 - c) * k.cross_sq
    R = torch.cat([R, torch.zeros(N, 3, 1, device=theta.device)], 2)
    return torch.cat([R, k.last_row.expand(N, 1, 4)], 1)


class AdaController:
    """Adaptive augmentation strength (StyleGAN2-ADA): ``p`` follows D's overconfidence on reals.

    ``accumulate`` adds ``sign(D(x_real))`` of every D step (on the device); every ``interval``
    steps ``update`` moves ``p`` by ``sign(r_t - target) * images / (speed_kimg * 1000)``, i.e.
    ``p`` can travel 0 -> 1 in ``speed_kimg`` thousand images. The arithmetic stays on the device:
    ``p`` is a 0-dim tensor the pipe reads as is, so nothing waits for the GPU; ``p`` and
    ``r_t`` are read back to Python only when a tick reports them.
    """

    def __init__(
        self,
        *,
        target: float = 0.6,  # r_t to hold (ADA: 0.6)
        speed_kimg: float = 500.0,  # thousands of images for p to go 0 -> 1 (ADA: 500)
        interval: int = 4,  # D steps between adjustments (ADA: 4)
        p: float = 0.0,  # initial strength
        adjust: bool = True,  # False = fixed p (``augment: fixed``): r_t is still measured and logged
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation p must be in [0, 1], got {p}")
        if speed_kimg <= 0 or interval < 1:
            raise ValueError("ada speed_kimg must be > 0 and interval >= 1")
        self.target = float(target)
        self.speed_kimg = float(speed_kimg)
        self.interval = int(interval)
        self.adjust = adjust
        dev = torch.device(device)
        self.p = torch.tensor(float(p), device=dev)
        self.rt = torch.tensor(float("nan"), device=dev)  # r_t of the last interval
        self._sum = torch.zeros((), device=dev)  # sum of sign(D(x_real)) since the last update
        self._count = torch.zeros((), device=dev)  # logits summed
        self._steps = 0  # accumulate() calls since the last update (a Python int: no sync)
        self._images = 0

    def accumulate(self, real_logits: torch.Tensor, batch_size: int) -> None:
        """Add one D step's real logits; ``batch_size`` = images of the step on all ranks."""
        logits = real_logits.detach().float()
        self._sum.add_(torch.sign(logits).sum())
        self._count.add_(logits.numel())
        self._steps += 1
        self._images += int(batch_size)

    def due(self) -> bool:
        return self._steps >= self.interval

    def update(self, world_size: int = 1) -> None:
        """Adjust ``p`` from the signs gathered since the last call (all ranks' when distributed)."""
        stats = torch.stack([self._sum, self._count])
        if world_size > 1:
            torch.distributed.all_reduce(stats)
        rt = stats[0] / stats[1].clamp(min=1)
        self.rt = torch.where(stats[1] > 0, rt, self.rt)
        if self.adjust:
            step = self._images / (self.speed_kimg * 1000.0)
            self.p = (self.p + torch.sign(rt - self.target) * step * (stats[1] > 0)).clamp(0.0, 1.0)
        self._sum.zero_()
        self._count.zero_()
        self._steps = 0
        self._images = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self.p.detach().cpu(),
            "rt": self.rt.detach().cpu(),
            "sum": self._sum.detach().cpu(),
            "count": self._count.detach().cpu(),
            "steps": self._steps,
            "images": self._images,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.p.device
        self.p = state["p"].to(dev, torch.float32).reshape(())
        self.rt = state["rt"].to(dev, torch.float32).reshape(())
        self._sum = state["sum"].to(dev, torch.float32).reshape(()).clone()
        self._count = state["count"].to(dev, torch.float32).reshape(()).clone()
        self._steps = int(state["steps"])
        self._images = int(state["images"])


def from_train_config(train_cfg: TrainConfig, device: torch.device) -> tuple[AugmentPipe | None, AdaController | None]:
    """The pipe and controller ``train.augment`` asks for (``none``: neither; ``fixed``: p never moves)."""
    if train_cfg.augment == "none":
        return None, None
    ada = AdaController(target=train_cfg.ada_target, speed_kimg=train_cfg.ada_kimg, interval=train_cfg.ada_interval,
                        p=train_cfg.augment_p, adjust=train_cfg.augment == "ada", device=device)
    return AugmentPipe(ops=train_cfg.augment_ops), ada
