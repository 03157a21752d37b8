"""GAN losses: pure functions of logits, and one loss object per family that runs a step's phases.

The functions return a scalar mean over the batch; weights (``r1_gamma / 2``, the lazy-R1
interval, ``wgan_lambda``) are applied by their caller, so they stay free of configuration.

The objects (``LogisticLoss``, ``WganGpLoss``, ``ProjectedLoss``, ``SumLoss``; ``build_loss`` picks one
from ``train.loss`` and the kind of D) are
what the Trainer's step calls, as StyleGAN2-ADA's ``training/loss.py``: each runs G and D for its
D phase (main loss, plus the penalty on the steps that have one) and its G phase, augments
everything D sees and owns the autocast regions and fp32 islands. A phase returns the loss to
minimise with its graph; the backward, the GradScaler and the optimizer step are the Trainer's
(the scaler wraps the optimizer step: unscaling, the inf check that may skip it, and its state
checkpointed next to the optimizer's), so a loss object never touches an optimizer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from stylegan.config import ConfigError
from stylegan.training.device import autocast

if TYPE_CHECKING:
    from stylegan.config import TrainConfig
    from stylegan.training.augment import AdaController, AugmentPipe


def _check_logits(*logits: torch.Tensor) -> None:
    for x in logits:
        assert x.ndim == 2 and x.shape[1] == 1, f"expected logits of shape (N, 1), got {tuple(x.shape)}"


def _check_patch_logits(*logits: torch.Tensor) -> None:
    for x in logits:
        assert x.ndim == 2 and x.shape[1] >= 1, f"expected patch logits of shape (N, P), got {tuple(x.shape)}"


def logistic_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic G loss: E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))]."""
    _check_logits(fake_logits)
    return F.softplus(-fake_logits).mean()


def logistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic D loss: E[softplus(D(G(z)))] + E[softplus(-D(x))]."""
    _check_logits(real_logits, fake_logits)
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] on reals (``reals`` must have had ``requires_grad_(True)`` before D).

    The graph is kept (``create_graph``) so the penalty can be backpropagated into D. The caller
    multiplies by ``r1_gamma / 2`` (and by the lazy interval when applied every k steps).
    """
    _check_logits(real_logits)
    assert reals.requires_grad, "r1_penalty needs reals.requires_grad_(True) before computing the logits"
    (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
    return grad.square().sum(dim=tuple(range(1, grad.ndim))).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge D loss on patch logits (N, P), as Projected GAN: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],
    each mean over every image and patch."""
    _check_patch_logits(real_logits, fake_logits)
    return F.relu(1 + fake_logits).mean() + F.relu(1 - real_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge G loss on patch logits (N, P): -E[D(G(z))]."""
    _check_patch_logits(fake_logits)
    return -fake_logits.mean()


def patch_logistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic D loss on patch logits (N, P): E[softplus(D(G(z)))] + E[softplus(-D(x))] over images and patches."""
    _check_patch_logits(real_logits, fake_logits)
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def patch_logistic_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic G loss on patch logits (N, P): E[softplus(-D(G(z)))]."""
    _check_patch_logits(fake_logits)
    return F.softplus(-fake_logits).mean()


def wgan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """WGAN G loss: -E[D(G(z))]."""
    _check_logits(fake_logits)
    return -fake_logits.mean()


def wgan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, epsilon: float = 0.001) -> torch.Tensor:
    """WGAN D loss with Progressive GAN's drift term: E[D(G(z))] - E[D(x)] + epsilon * E[D(x)^2]."""
    _check_logits(real_logits, fake_logits)
    return fake_logits.mean() - real_logits.mean() + epsilon * real_logits.square().mean()


def gradient_penalty(
    D: Callable[[torch.Tensor], torch.Tensor],
    reals: torch.Tensor,
    fakes: torch.Tensor,
    target: float = 1.0,
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty E[(||grad D(x_hat)|| - target)^2 / target^2] at random points x_hat on
    the lines between reals and (detached) fakes. ``D`` is a callable image -> logits, e.g.
    ``lambda x: D(x, resolution=r, alpha=a)``. The caller multiplies by ``wgan_lambda``.
    ``weights`` (N, 1, 1, 1) are the points on those lines; None = drawn here with ``generator``."""
    assert reals.shape == fakes.shape, f"reals {tuple(reals.shape)} and fakes {tuple(fakes.shape)} differ"
    if weights is None:
        t = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device, dtype=reals.dtype, generator=generator)
    else:
        assert weights.shape == (reals.shape[0], 1, 1, 1), f"expected weights (N, 1, 1, 1), got {tuple(weights.shape)}"
        t = weights
    mixed = (reals.detach() + (fakes.detach() - reals.detach()) * t).requires_grad_(True)
    logits = D(mixed)
    _check_logits(logits)
    (grad,) = torch.autograd.grad(logits.sum(), mixed, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)
    return ((norm - target).square() / target**2).mean()


def wgan_gp_d_loss(
    D: Callable[[torch.Tensor], torch.Tensor],
    reals: torch.Tensor,
    fakes: torch.Tensor,
    *,
    wgan_lambda: float = 10.0,
    wgan_epsilon: float = 0.001,
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full WGAN-GP D loss (Progressive GAN): wgan_d_loss + wgan_lambda * gradient_penalty.

    Returns ``(loss, penalty)`` so the caller can log the penalty on its own."""
    real_logits = D(reals)
    fake_logits = D(fakes.detach())
    penalty = gradient_penalty(D, reals, fakes, generator=generator, weights=weights)
    return wgan_d_loss(real_logits, fake_logits, wgan_epsilon) + wgan_lambda * penalty, penalty


# -- loss objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepArgs:
    """Where in the schedule a step's phases run."""

    resolution: int
    alpha: float  # fade-in weight, for the plain D of the double-backward passes (R1, GP)
    alpha_in: float | torch.Tensor  # the same for the G / D forwards (a device tensor when compiled)
    batch_size: int  # the global batch (all ranks together)
    nimg: int = 0  # images shown before this step (the projected D's blur fades over them)


@dataclass(frozen=True)
class DResult:
    """The D phase's outcome."""

    loss: torch.Tensor  # what D's backward minimises (graph attached), penalty included
    penalty: torch.Tensor  # R1 / GP before its weight (a zero on a step without it)
    regularised: bool  # whether the penalty was computed this step (ticks average it over those)


Rows = Callable[[int], torch.Tensor]  # global batch size -> this rank's rows of it, on the device


class GANLoss:
    """A loss family's phases. Subclasses define ``d_phase`` and ``_g_main``.

    ``G_fwd`` / ``D_fwd`` may be torch.compile'd; ``D`` is the plain discriminator, for passes
    that need a double backward (compiled graphs lack it). Augmentation is on when both
    ``augment_pipe`` and ``ada`` (the controller whose ``p`` the pipe reads) are given.
    """

    def __init__(
        self,
        *,
        G_fwd: Callable[..., torch.Tensor],
        D: torch.nn.Module,
        D_fwd: Callable[..., torch.Tensor],
        device: torch.device,
        amp_dtype: torch.dtype | None,  # autocast dtype (None = fp32)
        mixing_prob: float,  # style mixing probability of G's training forwards
        augment_pipe: AugmentPipe | None = None,
        ada: AdaController | None = None,
        aug_gen: torch.Generator | None = None,  # the augmentation's stream (the checkpoint carries it)
        rows: Rows,
        world_size: int = 1,
    ) -> None:
        self.G_fwd, self.D, self.D_fwd = G_fwd, D, D_fwd
        self.device = device
        self.amp_dtype = amp_dtype
        self.mixing_prob = mixing_prob
        self.augment_pipe, self.ada, self.aug_gen = augment_pipe, ada, aug_gen
        self.rows = rows
        self.world_size = world_size

    def d_phase(self, step: int, reals: torch.Tensor, z: torch.Tensor, at: StepArgs) -> DResult:
        """D's loss on ``reals`` and on fakes from latents ``z`` at training ``step`` (0-based)."""
        raise NotImplementedError

    def _g_main(self, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_phase(self, z: torch.Tensor, at: StepArgs) -> torch.Tensor:
        """G's loss on fakes from ``z``; G's forward also moves ``w_avg`` (update_w_avg)."""
        return self.g_loss_on(self._g_fakes(z, at), at)

    def g_loss_on(self, fakes: torch.Tensor, at: StepArgs) -> torch.Tensor:
        """G's loss on ``fakes`` (with their graph into G), as this family's D judges them."""
        with self._autocast():
            fake_logits = self.D_fwd(self.seen(fakes, at), resolution=at.resolution, alpha=at.alpha_in)
        return self._g_main(fake_logits.float())

    def seen(self, x: torch.Tensor, at: StepArgs) -> torch.Tensor:
        """What this family's D sees of ``x`` in G's phase: the augmentation (ProjectedLoss adds its blur)."""
        return self.augment(x)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees: ``x`` through the augmentation pipe at the current p (identity when off)."""
        if self.augment_pipe is None or self.ada is None:
            return x
        # In fp32 whatever the autocast around it: the colour matrices are statistics of a sort.
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self.world_size == 1:
                return self.augment_pipe(x.float(), self.ada.p, self.aug_gen)
            B = x.shape[0] * self.world_size
            # Drawn for the global batch, this rank's rows kept: N processes augment as one does.
            return self.augment_pipe(x.float(), self.ada.p, self.aug_gen, shard=(B, self.rows(B)))

    def _g_kwargs(self, at: StepArgs) -> dict[str, Any]:
        # G draws its noise and mixing latents for the global batch and keeps this rank's rows.
        shard = None if self.world_size == 1 else (at.batch_size, self.rows(at.batch_size))
        return {"resolution": at.resolution, "alpha": at.alpha_in, "mixing_prob": self.mixing_prob,
                "noise_mode": "random", "shard": shard}

    def _fakes(self, z: torch.Tensor, at: StepArgs) -> torch.Tensor:
        """Fakes for D's phase: no graph into G."""
        with torch.no_grad(), self._autocast():
            return self.G_fwd(z, **self._g_kwargs(at))

    def _g_fakes(self, z: torch.Tensor, at: StepArgs) -> torch.Tensor:
        """Fakes for G's phase: with the graph, and moving ``w_avg``."""
        with self._autocast():
            return self.G_fwd(z, update_w_avg=True, **self._g_kwargs(at))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)


class LogisticLoss(GANLoss):
    """Non-saturating logistic loss with R1 on reals, lazily every ``r1_interval`` D steps (StyleGAN)."""

    def __init__(self, *, r1_gamma: Callable[[int], float], r1_interval: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.r1_gamma = r1_gamma  # resolution -> R1 weight (train.r1_gamma_at)
        self.r1_interval = r1_interval

    def r1_due(self, step: int, resolution: int) -> bool:
        """Whether the D phase of ``step`` computes R1: every ``r1_interval``-th step, weight > 0."""
        return self.r1_gamma(resolution) > 0 and step % self.r1_interval == 0

    def r1_weight(self, resolution: int) -> float:
        """R1's weight when applied: gamma / 2, times the interval to keep its strength (lazy R1)."""
        return self.r1_gamma(resolution) * 0.5 * self.r1_interval

    def d_phase(self, step: int, reals: torch.Tensor, z: torch.Tensor, at: StepArgs) -> DResult:
        return self.d_loss_on(step, reals, self._fakes(z, at), at)

    def d_loss_on(self, step: int, reals: torch.Tensor, fakes: torch.Tensor, at: StepArgs) -> DResult:
        """D's phase on given ``fakes`` (no graph into G; SumLoss shares them between its Ds)."""
        res = at.resolution
        do_r1 = self.r1_due(step, res)
        with self._autocast():
            fake_logits = self.D_fwd(self.augment(fakes.detach()), resolution=res, alpha=at.alpha_in)
        if do_r1:
            real_logits, r1 = self._d_reg(reals, at)
        else:
            r1 = torch.zeros((), device=self.device)
            with self._autocast():
                real_logits = self.D_fwd(self.augment(reals), resolution=res, alpha=at.alpha_in)
        if self.ada is not None:
            self.ada.accumulate(real_logits, at.batch_size)
        loss = logistic_d_loss(real_logits.float(), fake_logits.float())
        if do_r1:
            loss = loss + r1 * self.r1_weight(res)
        return DResult(loss, r1, do_r1)

    def _d_reg(self, reals: torch.Tensor, at: StepArgs) -> tuple[torch.Tensor, torch.Tensor]:
        """The R1 pass: D's real logits (which the main loss uses too) and the penalty.

        R1 is the gradient w.r.t. the clean reals, through the augmentation (as ADA), by the
        plain D (double backward)."""
        reals_g = reals.detach().requires_grad_(True)
        with self._r1_autocast():
            real_logits = self.D(self.augment(reals_g), resolution=at.resolution, alpha=at.alpha)
        return real_logits, r1_penalty(real_logits.float(), reals_g)  # fp32, as reals_g and its gradient

    def _r1_autocast(self) -> contextlib.AbstractContextManager:
        # bf16 keeps fp32's range, so the R1 pass may run in it (the penalty itself is summed in
        # fp32); in fp16 the unscaled input gradients of the double backward would underflow.
        return self._autocast() if self.amp_dtype == torch.bfloat16 else contextlib.nullcontext()

    def _g_main(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return logistic_g_loss(fake_logits)


class WganGpLoss(GANLoss):
    """WGAN-GP with Progressive GAN's drift term; the penalty on every D step.

    The D phase runs in fp32 (outside autocast; only G's forward of the fakes autocasts): the
    penalty needs the plain D's double backward, and its terms share that D."""

    def __init__(self, *, wgan_lambda: float = 10.0, wgan_epsilon: float = 0.001, gen: torch.Generator,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.wgan_lambda, self.wgan_epsilon = wgan_lambda, wgan_epsilon
        # The mixing points' stream: the trainer's device generator (flips, latents), which the
        # checkpoint carries.
        self.gen = gen

    def d_phase(self, step: int, reals: torch.Tensor, z: torch.Tensor, at: StepArgs) -> DResult:
        fakes = self._fakes(z, at)
        # Drawn for the global batch, this rank's rows kept.
        B = at.batch_size
        t = torch.rand(B, 1, 1, 1, device=self.device, dtype=reals.dtype, generator=self.gen)
        loss, gp = wgan_gp_d_loss(
            lambda x: self.D(self.augment(x), resolution=at.resolution, alpha=at.alpha),
            reals,
            fakes.float(),
            wgan_lambda=self.wgan_lambda,
            wgan_epsilon=self.wgan_epsilon,
            weights=t[self.rows(B)],
        )
        return DResult(loss, gp, True)

    def _g_main(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return wgan_g_loss(fake_logits)


class ProjectedLoss(GANLoss):
    """A projected D's loss (``stylegan.training.projected``) on its patch logits: hinge (Projected GAN's) or the
    non-saturating logistic, means over every image and patch. No R1 or other penalty (the official
    uses none: "no regularization needed for PG"). What D sees is blurred first (StyleGAN-XL's blur,
    ``sigma_at``; off by default, as Projected GAN), then augmented."""

    def __init__(
        self,
        *,
        kind: str,  # "hinge" | "logistic"
        blur_sigma: float = 0.0,  # blur at the start, in pixels at ``blur_resolution``
        blur_fade_kimg: float = 0.0,  # kimg over which it fades linearly to 0 (0 = no blur)
        blur_resolution: int = 256,  # where blur_sigma is in pixels (the schedule's top resolution)
        track_ada: bool = True,  # feed ADA's r_t with the real logits (SumLoss: only its progan part does)
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if kind not in ("hinge", "logistic"):
            raise ValueError(f"a projected D takes train.loss hinge or logistic, got {kind!r}")
        self.kind = kind
        self.blur_sigma, self.blur_fade_kimg, self.blur_resolution = blur_sigma, blur_fade_kimg, blur_resolution
        self.track_ada = track_ada

    def sigma_at(self, at: StepArgs) -> float:
        """The blur sigma of a step, in pixels at its resolution: StyleGAN-XL's linear fade to 0."""
        if self.blur_sigma <= 0 or self.blur_fade_kimg <= 0:
            return 0.0
        left = max(1.0 - at.nimg / (self.blur_fade_kimg * 1000.0), 0.0)
        return left * self.blur_sigma * at.resolution / self.blur_resolution

    def seen(self, x: torch.Tensor, at: StepArgs) -> torch.Tensor:
        from stylegan.training.projected import d_blur

        sigma = self.sigma_at(at)
        return self.augment(d_blur(x, sigma) if sigma > 0 else x)

    def d_phase(self, step: int, reals: torch.Tensor, z: torch.Tensor, at: StepArgs) -> DResult:
        return self.d_loss_on(step, reals, self._fakes(z, at), at)

    def d_loss_on(self, step: int, reals: torch.Tensor, fakes: torch.Tensor, at: StepArgs) -> DResult:
        """D's phase on given ``fakes`` (no graph into G): fakes then reals, as the official."""
        with self._autocast():
            fake_logits = self.D_fwd(self.seen(fakes.detach(), at), resolution=at.resolution, alpha=at.alpha_in)
            real_logits = self.D_fwd(self.seen(reals, at), resolution=at.resolution, alpha=at.alpha_in)
        if self.track_ada and self.ada is not None:
            self.ada.accumulate(real_logits, at.batch_size)
        d_loss = hinge_d_loss if self.kind == "hinge" else patch_logistic_d_loss
        loss = d_loss(real_logits.float(), fake_logits.float())
        return DResult(loss, torch.zeros((), device=self.device), False)

    def _g_main(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return hinge_g_loss(fake_logits) if self.kind == "hinge" else patch_logistic_g_loss(fake_logits)


class SumLoss(GANLoss):
    """``both`` (Kumari et al., "Ensembling Off-the-shelf Models for GAN Training", CVPR 2022): the progan
    D's logistic loss with its R1 plus the projected D's loss, in D's phase and in G's. Both Ds judge
    the same fakes (one G forward per phase); each augments what it sees with its own draws."""

    def __init__(self, *, progan: LogisticLoss, projected: ProjectedLoss, **kw: Any) -> None:
        super().__init__(**kw)
        self.progan, self.projected = progan, projected

    def d_phase(self, step: int, reals: torch.Tensor, z: torch.Tensor, at: StepArgs) -> DResult:
        fakes = self._fakes(z, at)
        a = self.progan.d_loss_on(step, reals, fakes, at)
        b = self.projected.d_loss_on(step, reals, fakes, at)
        return DResult(a.loss + b.loss, a.penalty, a.regularised)  # the penalty is the progan D's R1

    def g_phase(self, z: torch.Tensor, at: StepArgs) -> torch.Tensor:
        fakes = self._g_fakes(z, at)
        return self.progan.g_loss_on(fakes, at) + self.projected.g_loss_on(fakes, at)


def build_loss(train_cfg: TrainConfig, *, gen: torch.Generator, **kw: Any) -> GANLoss:
    """The loss object for ``train_cfg.loss`` and the kind of ``kw["D"]`` (its ``kind`` attribute: a
    progan D has none). ``kw``: GANLoss's arguments; ``gen``: the device generator WGAN-GP draws its
    mixing points from."""
    kind = getattr(kw["D"], "kind", "progan")
    loss = train_cfg.loss
    if kind == "progan":
        if loss == "logistic":
            return LogisticLoss(r1_gamma=train_cfg.r1_gamma_at, r1_interval=train_cfg.r1_interval, **kw)
        if loss == "wgan-gp":
            return WganGpLoss(wgan_lambda=train_cfg.wgan_lambda, wgan_epsilon=train_cfg.wgan_epsilon, gen=gen, **kw)
        if loss == "hinge":
            raise ConfigError("train.loss hinge is the projected discriminator's (model.discriminator: projected "
                              "or both); the progan D takes logistic or wgan-gp")
        raise ValueError(f"unknown train.loss {loss!r}; use logistic or wgan-gp")
    if loss not in ("hinge", "logistic"):
        raise ConfigError(f"model.discriminator {kind} takes train.loss hinge (Projected GAN's) or logistic, "
                          f"not {loss!r}")
    D, D_fwd = kw["D"], kw["D_fwd"]
    top = train_cfg.max_resolution or D.cfg.max_resolution
    blur = {"blur_sigma": train_cfg.projected_blur_sigma, "blur_fade_kimg": train_cfg.projected_blur_fade_kimg,
            "blur_resolution": top}
    if kind == "projected":
        return ProjectedLoss(kind=loss, **blur, **kw)
    if kind == "both":
        progan = LogisticLoss(r1_gamma=train_cfg.r1_gamma_at, r1_interval=train_cfg.r1_interval,
                              **{**kw, "D": D.progan, "D_fwd": functools.partial(D_fwd, part="progan")})
        projected = ProjectedLoss(kind=loss, **blur, track_ada=False,
                                  **{**kw, "D": D.projected, "D_fwd": functools.partial(D_fwd, part="projected")})
        return SumLoss(progan=progan, projected=projected, **kw)
    raise ValueError(f"no loss for a discriminator of kind {kind!r}")
