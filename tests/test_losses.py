"""Loss functions against their closed forms."""

from __future__ import annotations

import pytest
import torch

from stylegan.config import ModelConfig
from stylegan.losses import (
    gradient_penalty,
    logistic_d_loss,
    logistic_g_loss,
    r1_penalty,
    wgan_d_loss,
    wgan_g_loss,
    wgan_gp_d_loss,
)
from stylegan.networks import Discriminator


def _linear_D(v: torch.Tensor, b: float = 0.3):
    return lambda x: x.flatten(1) @ v.view(-1, 1) + b


def test_logistic_losses_match_softplus_formulas() -> None:
    real = torch.tensor([[2.0], [-1.0], [0.5]])
    fake = torch.tensor([[-3.0], [0.0], [1.0]])
    sig = torch.sigmoid
    torch.testing.assert_close(logistic_g_loss(fake), -torch.log(sig(fake)).mean())
    expected_d = -torch.log(1 - sig(fake)).mean() - torch.log(sig(real)).mean()
    torch.testing.assert_close(logistic_d_loss(real, fake), expected_d)
    # At D = 0 everywhere both losses are log 2 per term.
    zeros = torch.zeros(4, 1)
    assert logistic_g_loss(zeros).item() == pytest.approx(0.6931472)
    assert logistic_d_loss(zeros, zeros).item() == pytest.approx(2 * 0.6931472)


def test_r1_of_linear_discriminator_is_squared_weight_norm() -> None:
    v = torch.randn(3 * 4 * 4, requires_grad=True)
    reals = torch.randn(5, 3, 4, 4).requires_grad_(True)
    penalty = r1_penalty(_linear_D(v)(reals), reals)
    torch.testing.assert_close(penalty, v.detach().square().sum())
    # The penalty is differentiable w.r.t. D's weights: d||v||^2/dv = 2v.
    penalty.backward()
    torch.testing.assert_close(v.grad, 2 * v.detach())


def test_r1_requires_grad_on_reals() -> None:
    reals = torch.randn(2, 3, 4, 4)
    with pytest.raises(AssertionError, match="requires_grad"):
        r1_penalty(reals.flatten(1).sum(1, keepdim=True), reals)


def test_r1_on_discriminator_trains_D() -> None:
    cfg = ModelConfig(z_dim=8, w_dim=8, mapping_layers=1, fmap_base=32, fmap_max=8, max_resolution=8)
    D = Discriminator(cfg)
    reals = torch.randn(4, 3, 8, 8).requires_grad_(True)
    penalty = r1_penalty(D(reals, resolution=8, alpha=0.5), reals)
    assert penalty.item() > 0
    penalty.backward()
    assert D.b8.conv0.weight.grad is not None and D.b8.conv0.weight.grad.abs().sum() > 0


def test_wgan_losses() -> None:
    real = torch.tensor([[2.0], [4.0]])
    fake = torch.tensor([[1.0], [-1.0]])
    torch.testing.assert_close(wgan_g_loss(fake), torch.tensor(0.0))
    # E[fake] - E[real] + eps * E[real^2] = 0 - 3 + 0.1 * 10
    torch.testing.assert_close(wgan_d_loss(real, fake, epsilon=0.1), torch.tensor(-2.0))


def test_gradient_penalty_of_linear_discriminator() -> None:
    reals, fakes = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    v = torch.randn(48)
    unit = _linear_D(v / v.norm())
    assert gradient_penalty(unit, reals, fakes).item() == pytest.approx(0.0, abs=1e-10)
    double = _linear_D(2 * v / v.norm())
    assert gradient_penalty(double, reals, fakes).item() == pytest.approx(1.0, rel=1e-5)


def test_wgan_gp_d_loss_combines_terms() -> None:
    reals, fakes = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    v = torch.randn(48)
    D = _linear_D(3 * v / v.norm())
    loss, penalty = wgan_gp_d_loss(D, reals, fakes, wgan_lambda=10.0, wgan_epsilon=0.001)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2
    expected = wgan_d_loss(D(reals), D(fakes), 0.001) + 10.0 * 4.0
    torch.testing.assert_close(loss, expected)
