"""Augmentation of what D sees and the ADA controller (stylegan/training/augment.py) and their trainer hooks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from stylegan.config import ConfigError, TrainConfig
from stylegan.training import Trainer, augment
from stylegan.training.augment import OPS, AdaController, AugmentPipe
from stylegan.training.networks import Discriminator, Generator
from tests.helpers import tiny_model_config, tiny_train_config, write_toy_data


def _images(n: int = 8, res: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_same_seed_same_batch_and_p_zero_is_the_identity() -> None:
    x, pipe = _images(), AugmentPipe()
    a = pipe(x, 0.5, torch.Generator().manual_seed(3))
    b = pipe(x, 0.5, torch.Generator().manual_seed(3))
    c = pipe(x, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(pipe(x, 0.0, torch.Generator().manual_seed(3)), x)
    assert torch.equal(pipe(x, torch.tensor(0.0), torch.Generator().manual_seed(3)), x)
    # The same draws whatever p is: the generator ends in the same state, so a resumed run lines up.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pipe(x, 0.0, g1), pipe(x, 0.9, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_each_transform_does_what_it_says_at_p_one() -> None:
    x = _images(4)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(AugmentPipe(ops=["xflip"])(x, 1.0, gen), x.flip(3))
    rot = AugmentPipe(ops=["rotate90"])(x, 1.0, gen)
    for i in range(len(x)):
        assert any(torch.equal(rot[i], torch.rot90(x[i], k, dims=(1, 2))) for k in (1, 2, 3))
    moved = AugmentPipe(ops=["translate"])(x, 1.0, gen)
    assert not torch.equal(moved, x) and moved.shape == x.shape
    assert set(moved.unique().tolist()) <= set(x.unique().tolist())  # integer shifts: no new values
    cut = AugmentPipe(ops=["cutout"])(x, 1.0, gen)
    zeros = (cut == 0).all(dim=1).flatten(1).sum(1)
    assert (zeros >= 16).all() and ((cut == x) | (cut == 0)).all()  # a hole of mid-grey, the rest intact
    grey = torch.zeros(2, 3, 8, 8) + 0.3  # grey stays grey under hue and saturation
    for op in ("hue", "saturation"):
        out = AugmentPipe(ops=[op])(grey, 1.0, gen)
        assert torch.allclose(out, grey, atol=1e-5), op
    col = AugmentPipe(ops=["brightness", "contrast"])(x, 1.0, gen)
    assert not torch.allclose(col, x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentPipe(ops=["zoom"])


def test_gradients_reach_the_generator_through_every_transform() -> None:
    m = tiny_model_config(z_dim=8, w_dim=8, mapping_layers=1, fmap_base=16, fmap_max=8, max_resolution=8)
    G, D = Generator(m), Discriminator(m)
    for op in OPS:
        G.zero_grad()
        fakes = G(torch.randn(4, 8), noise_mode="random")
        logits = D(AugmentPipe(ops=[op])(fakes, 1.0, torch.Generator().manual_seed(1)))
        logits.sum().backward()
        grads = [p.grad for p in G.synthesis.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), op
    # The R1 pass needs the second derivative through the augmentation.
    x = _images(2, 8).requires_grad_(True)
    logits = D(AugmentPipe()(x, 0.8, torch.Generator().manual_seed(2)))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    grad.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


def test_ada_p_rises_when_d_is_overconfident_and_falls_when_not() -> None:
    ada = AdaController(target=0.6, speed_kimg=0.1, interval=2)  # 0 -> 1 in 100 images
    for _ in range(4):  # D says "real" to every real: r_t = 1 > 0.6
        ada.accumulate(torch.full((8, 1), 3.0), batch_size=8)
        if ada.due():
            ada.update()
    assert float(ada.rt) == 1.0 and float(ada.p) == pytest.approx(2 * 16 / 100)
    for _ in range(6):  # D is unsure: r_t = 0 < 0.6, p falls
        ada.accumulate(torch.tensor([[1.0], [-1.0]]), batch_size=2)
        if ada.due():
            ada.update()
    assert float(ada.rt) == 0.0 and float(ada.p) == pytest.approx(2 * 16 / 100 - 3 * 4 / 100)
    for _ in range(40):  # ... down to 0, never below
        ada.accumulate(torch.tensor([[-1.0], [-1.0]]), batch_size=2)
        ada.update()
    assert float(ada.p) == 0.0
    fixed = AdaController(p=0.3, adjust=False, interval=1)
    fixed.accumulate(torch.ones(4, 1), 4)
    fixed.update()
    assert float(fixed.p) == pytest.approx(0.3) and float(fixed.rt) == 1.0  # measured, never moved
    # The state round-trips (the trainer checkpoints it).
    other = AdaController()
    other.load_state_dict(ada.state_dict())
    assert float(other.p) == float(ada.p) and other.state_dict()["steps"] == ada.state_dict()["steps"]


def test_trainer_augments_reals_fakes_and_the_r1_pass_and_p_resumes_exactly(tmp_path: Path) -> None:
    data = write_toy_data(tmp_path / "data")
    t = tiny_train_config(augment="ada", ada_kimg=0.05, ada_interval=2, ada_target=0.0, r1_interval=2, max_resolution=4,
                   stab_kimg=0.024, snapshot_kimg=1.0, grid_seeds=[0])
    trainer = Trainer(tiny_model_config(), t, data, tmp_path / "run")
    seen: list[tuple[bool, tuple[int, ...]]] = []
    pipe = trainer.augment_pipe
    assert pipe is not None

    def recording(x: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append((x.requires_grad, tuple(x.shape)))
        return AugmentPipe.forward(pipe, x, p, gen)

    pipe.forward = recording  # type: ignore[method-assign]
    trainer.train_step()  # step 0: lazy R1 applies
    # D: fakes, reals of the R1 pass (requiring grad: R1 differentiates through the pipe); G: fakes.
    assert len(seen) == 3 and seen[1][0] and seen[0][1] == seen[1][1] == (4, 3, 4, 4)
    ticks: list[dict] = []
    trainer.callbacks = [type("T", (), {"on_tick": lambda self, s: ticks.append(s)})()]
    trainer.run()
    assert ticks and all("augment_p" in s and "ada_rt" in s for s in ticks)
    assert ticks[-1]["augment_p"] > 0  # target 0: D is always "too sure", p climbs

    # A run stopped half way resumes with the same p and augmentation stream.
    first = Trainer(tiny_model_config(), t, data, tmp_path / "split")
    first.run(max_steps=3)
    again = Trainer(tiny_model_config(), t, data, tmp_path / "split")
    assert again.ada is not None and first.ada is not None and float(again.ada.p) == float(first.ada.p)
    again.run()
    assert float(again.ada.p) == float(trainer.ada.p)
    for k, v in trainer.G.state_dict().items():
        assert torch.equal(v, again.G.state_dict()[k]), k


def test_augment_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="augment_p"):
        TrainConfig(augment_p=1.5).validate()
    with pytest.raises(ConfigError, match="augment"):
        from stylegan.config import from_dict

        from_dict(TrainConfig, {"augment": "sometimes"}, "train")
    assert TrainConfig(r1_gamma="auto", batch_size=32).r1_gamma_at(32) == pytest.approx(0.0002 * 32 * 32 / 32)
    assert TrainConfig(r1_gamma="auto", r1_gammas={8: 1.0}).r1_gamma_at(8) == 1.0
    assert TrainConfig(r1_gamma=10.0).r1_gamma_at(16) == 10.0


# --- The colour code as it was before its constants were cached (frozen, to compare bits) ---


def _old_rotate_around_grey(theta: torch.Tensor) -> torch.Tensor:
    N, dev = theta.shape[0], theta.device
    K = torch.tensor(augment._CROSS, device=dev)
    c, s = torch.cos(theta).view(N, 1, 1), torch.sin(theta).view(N, 1, 1)
    R = torch.eye(3, device=dev) + s * K + (1 - c) * (K @ K)
    R = torch.cat([R, torch.zeros(N, 3, 1, device=dev)], 2)
    return torch.cat([R, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], device=dev).expand(N, 1, 4)], 1)


def _old_colour(x: torch.Tensor, draws: dict[str, tuple[torch.Tensor, torch.Tensor]], chosen: Any) -> torch.Tensor:
    N, dev = x.shape[0], x.device
    eye = torch.eye(4, device=dev).expand(N, 4, 4)
    M = eye
    luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev) / math.sqrt(3)
    luma_outer = torch.outer(luma, luma)
    for op, (u, r) in draws.items():
        on = chosen(u).view(N, 1, 1)
        if op == "brightness":
            b = (augment._normal(r) * augment.BRIGHTNESS_STD * on.view(N)).view(N, 1)
            M = torch.cat([M[:, :3, :3], M[:, :3, 3:] + b.view(N, 1, 1).expand(N, 3, 1)], 2)
            M = torch.cat([M, eye[:, 3:]], 1)
            continue
        if op == "contrast":
            s = torch.exp2(augment._normal(r) * augment.CONTRAST_STD)
            T = torch.diag_embed(torch.stack([s, s, s, torch.ones_like(s)], 1))
        elif op == "hue":
            T = _old_rotate_around_grey((r * 2 - 1) * math.pi * augment.HUE_MAX)
        else:
            s = torch.exp2(augment._normal(r) * augment.SATURATION_STD).view(N, 1, 1)
            T = luma_outer + (torch.eye(4, device=dev) - luma_outer) * s
            T = torch.cat([T[:, :3], eye[:, 3:]], 1)
        M = torch.where(on, T, eye) @ M
    flat = x.flatten(2)
    out = torch.baddbmm(M[:, :3, 3:].to(x.dtype), M[:, :3, :3].to(x.dtype), flat)
    return out.view_as(x)


def test_cached_colour_constants_give_the_bits_of_the_per_call_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images()
    cases = [
        (ops, p, seed, fmt)
        for ops in (OPS, ("hue",), ("saturation", "brightness"))
        for p in (0.5, 1.0)
        for seed in (0, 1)
        for fmt in (torch.contiguous_format, torch.channels_last)
    ]
    ours = [
        AugmentPipe(ops=ops)(x.contiguous(memory_format=fmt), p, torch.Generator().manual_seed(seed))
        for ops, p, seed, fmt in cases
    ]
    monkeypatch.setattr(AugmentPipe, "_colour", staticmethod(_old_colour))
    for (ops, p, seed, fmt), got in zip(cases, ours, strict=True):
        old = AugmentPipe(ops=ops)(x.contiguous(memory_format=fmt), p, torch.Generator().manual_seed(seed))
        assert torch.equal(got, old), (ops, p, seed, fmt)


def test_augment_forward_makes_no_tensor_from_python_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA each torch.tensor(...) of constants is a blocking host-to-device copy: they are built
    # once per device, never per call.
    monkeypatch.setattr(augment, "_CONSTANTS", {})
    calls: list[object] = []
    real_tensor = torch.tensor

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(args)
        return real_tensor(*args, **kwargs)

    x, p, pipe = _images(), torch.tensor(0.7), AugmentPipe()
    monkeypatch.setattr(torch, "tensor", spy)
    first = pipe(x, p, torch.Generator().manual_seed(0))  # builds the cache: luma, cross, last row
    assert len(calls) == 3 and len(augment._CONSTANTS) == 1
    calls.clear()
    for seed in range(3):
        pipe(x, p, torch.Generator().manual_seed(seed))
    assert calls == [] and len(augment._CONSTANTS) == 1
    with torch.inference_mode():  # a cache first filled in inference mode still serves autograd
        monkeypatch.setattr(augment, "_CONSTANTS", {})
        pipe(x, p, torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_(True)
    out = pipe(xg, p, torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(out.square().sum(), xg, create_graph=True)
    assert torch.equal(out.detach(), first) and grad.abs().sum() > 0
