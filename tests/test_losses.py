"""Loss functions against their closed forms; the loss objects' phases against hand-written ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stylegan.config import TrainConfig
from stylegan.training.losses import (
    GANLoss,
    LogisticLoss,
    StepArgs,
    WganGpLoss,
    build_loss,
    gradient_penalty,
    logistic_d_loss,
    logistic_g_loss,
    r1_penalty,
    wgan_d_loss,
    wgan_g_loss,
    wgan_gp_d_loss,
)
from stylegan.training.networks import Discriminator, Generator
from tests.helpers import tiny_model_config


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
    cfg = tiny_model_config(z_dim=8, w_dim=8, mapping_layers=1, fmap_max=8, max_resolution=8)
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


# -- loss objects ----------------------------------------------------------------------------


class _QuadD(torch.nn.Module):
    """D(x) = sum(w * x^2) + b, so grad_x D = 2 w x by hand; records whether autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 4, 4, generator=g))
        self.b = torch.nn.Parameter(torch.tensor(0.1))
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor, resolution: int, alpha: float | torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled(x.device.type))
        return self.hand(x)

    def hand(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.w * x.float().square()).flatten(1).sum(1) + self.b)[:, None]


class _LinearG(torch.nn.Module):
    """G(z) = tanh(z W) as 3x4x4 images; records each call's grad mode, autocast and w_avg flag."""

    def __init__(self) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(0.3 * torch.randn(8, 48, generator=torch.Generator().manual_seed(1)))
        self.calls: list[dict[str, Any]] = []

    def forward(self, z: torch.Tensor, *, update_w_avg: bool = False, **kw: Any) -> torch.Tensor:
        self.calls.append({"grad": torch.is_grad_enabled(), "autocast": torch.is_autocast_enabled("cpu"),
                           "update_w_avg": update_w_avg, **kw})
        return self.hand(z)

    def hand(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W).view(-1, 3, 4, 4)


def _nets(**kw: Any) -> dict[str, Any]:
    G, D = _LinearG(), _QuadD()
    return {"G_fwd": G, "D": D, "D_fwd": D, "device": torch.device("cpu"), "amp_dtype": None, "mixing_prob": 0.5,
            "rows": lambda B: torch.arange(B), **kw}


def _inputs(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, 4, 4, generator=g).tanh(), torch.randn(n, 8, generator=g)


def test_logistic_loss_applies_r1_on_every_kth_step_scaled_by_k() -> None:
    nets = _nets()
    G, D = nets["G_fwd"], nets["D"]
    loss = LogisticLoss(r1_gamma=lambda res: 4.0 if res == 4 else 0.0, r1_interval=3, **nets)
    reals, z = _inputs()
    at = StepArgs(resolution=4, alpha=1.0, alpha_in=1.0, batch_size=5)
    with torch.no_grad():
        fakes = G.hand(z)
        base = logistic_d_loss(D.hand(reals), D.hand(fakes))
        r1 = (2 * D.w * reals).square().flatten(1).sum(1).mean()  # E ||grad_x D||^2, by hand
    for step in range(7):
        out = loss.d_phase(step, reals, z, at)
        assert out.regularised == (step % 3 == 0) == loss.r1_due(step, 4), step
        if out.regularised:
            torch.testing.assert_close(out.penalty, r1)
            torch.testing.assert_close(out.loss, base + r1 * 4.0 / 2 * 3)  # gamma / 2, times the interval
        else:
            assert float(out.penalty) == 0.0
            torch.testing.assert_close(out.loss, base)
    # Only the D phase's forward of G ran, under no_grad, with this step's arguments.
    assert all(not c["grad"] and not c["update_w_avg"] for c in G.calls)
    assert G.calls[0] | {"grad": None} == {"grad": None, "autocast": False, "update_w_avg": False, "resolution": 4,
                                           "alpha": 1.0, "mixing_prob": 0.5, "noise_mode": "random", "shard": None}
    # A zero weight at the resolution: no R1 pass at all.
    assert not loss.d_phase(0, reals, z, StepArgs(8, 1.0, 1.0, 5)).regularised and loss.r1_weight(4) == 6.0


@pytest.mark.parametrize("world_size", [1, 2])
def test_wgan_gp_loss_matches_the_hand_written_formula(world_size: int) -> None:
    # With 2 ranks this one computes rows 5..9 of a global batch of 10: the mixing points are
    # drawn for all 10 from the shared stream and this rank's rows kept.
    gen = torch.Generator().manual_seed(3)
    B = 5 * world_size
    nets = _nets(rows=lambda n: torch.arange(n)[n - 5:], world_size=world_size)
    G, D = nets["G_fwd"], nets["D"]
    loss = WganGpLoss(wgan_lambda=10.0, wgan_epsilon=0.01, gen=gen, **nets)
    reals, z = _inputs()
    t = torch.rand(B, 1, 1, 1, generator=torch.Generator().set_state(gen.get_state()))[B - 5:]
    out = loss.d_phase(0, reals, z, StepArgs(4, 1.0, 1.0, B))
    with torch.no_grad():
        fakes = G.hand(z)
        x_hat = reals + (fakes - reals) * t
        gp = ((2 * D.w * x_hat).flatten(1).norm(dim=1) - 1).square().mean()
        real, fake = D.hand(reals), D.hand(fakes)
        expected = fake.mean() - real.mean() + 0.01 * real.square().mean() + 10.0 * gp
    assert out.regularised  # the penalty on every step (r1_interval does not apply)
    torch.testing.assert_close(out.penalty, gp)
    torch.testing.assert_close(out.loss, expected)
    shard = G.calls[0]["shard"]  # G draws its noise and mixing for the global batch too
    assert shard is None if world_size == 1 else (shard[0] == B and torch.equal(shard[1], torch.arange(5, 10)))


@pytest.mark.parametrize("kind", ["logistic", "wgan-gp"])
def test_loss_phases_leave_backward_and_optimizer_to_the_trainer(kind: str) -> None:
    cfg = tiny_model_config(z_dim=8, w_dim=8, mapping_layers=1, fmap_max=8, max_resolution=8)
    torch.manual_seed(0)
    G, D = Generator(cfg), Discriminator(cfg)
    loss = build_loss(TrainConfig(loss=kind), G_fwd=G, D=D, D_fwd=D, device=torch.device("cpu"), amp_dtype=None,
                      mixing_prob=0.9, gen=torch.Generator(), rows=lambda n: torch.arange(n))
    assert isinstance(loss, LogisticLoss if kind == "logistic" else WganGpLoss)
    assert not any(isinstance(v, (torch.optim.Optimizer, torch.amp.GradScaler)) for v in vars(loss).values())
    params = {n: p.detach().clone() for net in (G, D) for n, p in net.named_parameters(prefix=type(net).__name__)}
    at = StepArgs(8, 0.5, 0.5, 4)
    d = loss.d_phase(0, torch.randn(4, 3, 8, 8), torch.randn(4, 8), at)
    g = loss.g_phase(torch.randn(4, 8), at)
    assert d.regularised and d.loss.requires_grad and g.requires_grad
    # Neither a backward nor a step: gradients and weights are as they were.
    for net in (G, D):
        for n, p in net.named_parameters(prefix=type(net).__name__):
            assert p.grad is None and torch.equal(p, params[n]), n
    d.loss.backward()  # the loss carries its graph: the caller's backward reaches D
    assert D.b8.conv0.weight.grad is not None and D.b8.conv0.weight.grad.abs().sum() > 0


class _SpyPipe:
    """An augmentation pipe that records what it sees and passes images through."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, x: torch.Tensor, p: torch.Tensor, gen: torch.Generator,
                 shard: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        self.seen.append({"autocast": torch.is_autocast_enabled("cpu"), "dtype": x.dtype,
                          "requires_grad": x.requires_grad, "shard": shard})
        return x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_regions_and_fp32_islands(dtype: torch.dtype) -> None:
    from stylegan.training.augment import AdaController

    pipe = _SpyPipe()
    aug = {"augment_pipe": pipe, "ada": AdaController(p=0.5), "aug_gen": torch.Generator()}
    nets = _nets(amp_dtype=dtype, **aug)
    G, D = nets["G_fwd"], nets["D"]
    loss = LogisticLoss(r1_gamma=lambda res: 1.0, r1_interval=2, **nets)
    reals, z = _inputs()
    at = StepArgs(4, 1.0, 1.0, 5)
    loss.d_phase(0, reals, z, at)  # R1 step: fakes (autocast), the R1 pass (bf16 only: fp16 would underflow)
    loss.d_phase(1, reals, z, at)  # fakes and reals, both autocast
    loss.g_phase(z, at)
    assert D.autocast == [True, dtype == torch.bfloat16, True, True, True]
    assert [c["autocast"] for c in G.calls] == [True] * 3 and [c["update_w_avg"] for c in G.calls] == [0, 0, 1]
    # Everything D saw went through the pipe, in fp32 with autocast off; the R1 pass's reals need grad.
    assert len(pipe.seen) == 5 and all(s["dtype"] == torch.float32 and not s["autocast"] for s in pipe.seen)
    assert [s["requires_grad"] for s in pipe.seen] == [False, True, False, False, True]  # G's fakes: grad
    assert loss.ada is not None and loss.ada.state_dict()["steps"] == 2  # r_t of both D phases' reals

    # WGAN-GP's D phase is fp32 throughout (reals, fakes, the mixed points); its G phase autocasts.
    pipe.seen.clear()
    nets = _nets(amp_dtype=dtype, **aug)
    wgan = WganGpLoss(gen=torch.Generator(), **nets)
    wgan.d_phase(0, reals, z, at)
    wgan.g_phase(z, at)
    assert nets["D"].autocast == [False, False, False, True] and len(pipe.seen) == 4
    assert isinstance(wgan, GANLoss) and all(not s["autocast"] for s in pipe.seen)


def test_build_loss_reads_the_train_config() -> None:
    kw: dict[str, Any] = _nets()
    logistic = build_loss(TrainConfig(r1_gamma=2.0, r1_gammas={8: 5.0}, r1_interval=4), gen=torch.Generator(), **kw)
    assert isinstance(logistic, LogisticLoss) and logistic.r1_interval == 4
    assert logistic.r1_weight(4) == 2.0 / 2 * 4 and logistic.r1_weight(8) == 5.0 / 2 * 4
    wgan = build_loss(TrainConfig(loss="wgan-gp", wgan_lambda=3.0, wgan_epsilon=0.5), gen=torch.Generator(), **kw)
    assert isinstance(wgan, WganGpLoss) and (wgan.wgan_lambda, wgan.wgan_epsilon) == (3.0, 0.5)
