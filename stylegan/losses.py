"""GAN losses as pure functions of logits (and, for penalties, of the images they came from).

Each returns a scalar mean over the batch. Weights (``r1_gamma / 2``, the lazy-R1 interval,
``wgan_lambda``) are applied by the caller, so the functions stay free of configuration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _check_logits(*logits: torch.Tensor) -> None:
    for x in logits:
        assert x.ndim == 2 and x.shape[1] == 1, f"expected logits of shape (N, 1), got {tuple(x.shape)}"


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
