"""Helpers shared by the library tests. Imports no prefect, mlflow or dvc (see tests/flows_helpers.py for those)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from stylegan.config import ModelConfig, TrainConfig
from stylegan.training.networks import Generator

if TYPE_CHECKING:  # not imported at run time: modules that need no trainer need not import it
    from stylegan.training import Trainer

# The one colour of write_toy_data's images.
TOY_COLOUR = np.array([230, 60, 40], np.uint8)

REPO = Path(__file__).resolve().parents[1]


def tiny_model_params(**overrides: Any) -> dict[str, Any]:
    """The library tests' tiny model as a params.yaml ``model`` section: 16-d latents, 2 mapping layers, at
    most 16 channels, built up to 16x16. Pass only what a test needs to differ."""
    base: dict[str, Any] = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 32, "fmap_max": 16,
                            "max_resolution": 16}
    return {**base, **overrides}


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """``tiny_model_params(**overrides)`` as a ModelConfig."""
    return ModelConfig(**tiny_model_params(**overrides))


# The CLI tests' model: the tiny model at 8x8, so a whole schedule trains in seconds on CPU.
TINY_MODEL: dict[str, Any] = tiny_model_params(max_resolution=8)


def tiny_train_params(**overrides: Any) -> dict[str, Any]:
    """A CPU schedule of tiny stages (batch 4) as a params.yaml ``train`` section: 4x4 for 4 steps, then 8x8
    fading in and stabilising, 12 steps in all; a tick every 2 steps, a snapshot every 5, 2 checkpoints kept.
    Pass only what a test needs to differ (``max_resolution=None``: up to the model's)."""
    base: dict[str, Any] = {
        "start_resolution": 4,
        "max_resolution": 8,
        "fade_kimg": 0.016,
        "stab_kimg": 0.016,
        "batch_size": 4,
        "tick_kimg": 0.008,
        "snapshot_kimg": 0.02,
        "keep_checkpoints": 2,
        "grid_seeds": [0, 1, 2, 3],
        "device": "cpu",
    }
    return {**base, **overrides}


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """``tiny_train_params(**overrides)`` as a TrainConfig."""
    return TrainConfig(**tiny_train_params(**overrides))


def write_toy_data(root: Path, resolutions: tuple[int, ...] = (4, 8, 16), n: int = 64) -> Path:
    """Solid-colour images (TOY_COLOUR, every resolution), as the prepare stage packs them."""
    root.mkdir(parents=True, exist_ok=True)
    for r in resolutions:
        np.save(root / f"images_{r}.npy", np.broadcast_to(TOY_COLOUR[None, :, None, None], (n, 3, r, r)).copy())
    return root


def assert_same_training_state(a: Trainer, b: Trainer) -> None:
    """Two trainers hold bit-identical G, D, G_ema, optimizer states and progress."""
    for name in ("G", "D", "G_ema"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs"
    for name in ("opt_G", "opt_D"):
        sa, sb = getattr(a, name).state_dict()["state"], getattr(b, name).state_dict()["state"]
        for i in sa:
            for k in sa[i]:
                assert torch.equal(sa[i][k], sb[i][k]), f"{name} state {i}.{k} differs"
    assert (a.cur_nimg, a.step) == (b.cur_nimg, b.step)


# -- many processes (torchrun, gloo on CPU) ---------------------------------------------------------


def write_torchrun_project(root: Path, model: dict[str, Any], train: dict[str, Any]) -> tuple[Path, Path]:
    """root/data (32 random images at 4x4 and 8x8, NumPy RandomState 0) and root/params.yaml training
    ``model`` with ``train`` on them; returns (data, params)."""
    data = root / "data"
    data.mkdir()
    rng = np.random.RandomState(0)
    for r in (4, 8):
        np.save(data / f"images_{r}.npy", rng.randint(0, 256, (32, 3, r, r)).astype(np.uint8))
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"model": model, "train": train, "data": {"out_dir": str(data)}}))
    return data, params


def one_process_trainer(model: ModelConfig, train: TrainConfig, data: Path, run_dir: Path) -> Trainer:
    """The one-process Trainer that torchrun runs are compared with: seeded 0, its 4x4 constant input drawn
    as StyleGAN2's (randn), not StyleGAN's ones.

    A spatially uniform input gives instance norm zero variance, and the gradients of b4.const / b4.bias0
    are then round-off (cancelling sums of ~1e3-sized terms) that Adam turns into full-lr steps of either
    sign: no two summation orders agree there, be they 2 processes or 1."""
    from stylegan.training import Trainer

    torch.manual_seed(0)
    trainer = Trainer(model, train, data, run_dir)
    with torch.no_grad():
        for G in (trainer.G, trainer.G_ema):
            G.synthesis.b4.const.copy_(torch.randn(G.synthesis.b4.const.shape))
    return trainer


def torchrun_train(params: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``pokegan train --nproc-per-node 2`` (one thread per process, on a 2-core machine), output captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "stylegan.cli", "train", "--params", str(params), "--run-dir", str(run_dir),
           "--threads", "1", "--nproc-per-node", "2", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_nets_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    """G, D and G_ema of two checkpoints agree to 1e-5: float summation order differs between process
    counts (an all-reduce of two half-batch sums), relative for the large equalized-lr weights (the
    mapping's are ~100x, where 1e-5 is below fp32's step)."""
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, n=net, k=k: f"{n}.{k}: {m}")


def tiny_generator(resolution: int = 32, **overrides: Any) -> Generator:
    """A tiny real Generator (seeded 0, eval, no grad) with non-trivial noise strengths and w_avg, as after
    training: ``tiny_model_config`` with fmap_base 64 unless ``overrides`` say otherwise."""
    torch.manual_seed(0)
    cfg = tiny_model_config(**{"fmap_base": 64, "max_resolution": resolution, **overrides})
    G = Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "noise" in name:
                p.fill_(0.5)
        G.mapping.w_avg.normal_()
    return G


def blob_images(n: int, seed: int, res: int = 32) -> np.ndarray:
    """uint8 (n, 3, res, res): 1-3 coloured ellipses on white, like sprites on their background."""
    rng = np.random.RandomState(seed)
    yy, xx = (np.mgrid[0:res, 0:res] + 0.5) / res
    out = np.full((n, res, res, 3), 255.0)
    for i in range(n):
        for _ in range(rng.randint(1, 4)):
            cy, cx = rng.uniform(0.25, 0.75, 2)
            ry, rx = rng.uniform(0.08, 0.25, 2)
            out[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 255, 3)
    return np.ascontiguousarray(out.astype(np.uint8).transpose(0, 3, 1, 2))


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of uint8 NCHW images (sigma 0 = unchanged)."""
    if sigma == 0:
        return images
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = torch.nn.functional.pad(torch.from_numpy(images).float(), (r, r, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def write_noise_data(root: Path, n: int, resolutions: tuple[int, ...] = (4, 8), seed: int = 0) -> Path:
    """Random packed images (images_<R>.npy), as the prepare stage writes them: every batch, and every
    flip, is distinguishable."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for r in resolutions:
        np.save(root / f"images_{r}.npy", rng.integers(0, 256, (n, 3, r, r), dtype=np.uint8))
    return root


def write_cli_project(root: Path, images: int, kimg: float, grid_seeds: list[int],
                      evaluate: dict[str, Any]) -> Path:
    """A project as the CLI sees it: noise images prepared in root/prepared and a root/params.yaml that
    trains TINY_MODEL 4x4 then 8x8, fading in and stabilising for ``kimg`` each (batch 4, on CPU)."""
    data = write_noise_data(root / "prepared", images)
    params = {
        "data": {"out_dir": str(data)},
        "model": dict(TINY_MODEL),
        "train": {"start_resolution": 4, "fade_kimg": kimg, "stab_kimg": kimg, "batch_size": 4, "tick_kimg": kimg,
                  "snapshot_kimg": 1.0, "grid_seeds": grid_seeds, "device": "cpu"},
        "evaluate": evaluate,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@contextmanager
def alarm(seconds: int, message: str) -> Iterator[None]:
    """TimeoutError(message) after ``seconds`` in the main thread: a regression that blocks (a FIFO opened
    for reading, a hung decoder) fails the test instead of hanging the run."""

    def expire(*_: object) -> None:
        raise TimeoutError(message)

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), SIGKILL it after ``grace`` s:
    servers and workers have children that terminating ``proc`` alone would leave running."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


POKEDEX_NAMES = ["Bulbasaur", "Ivysaur", "Charmander", "Squirtle"]


def write_tiny_pokedex(folder: Path) -> Path:
    """An untrained (seeded) Pokédex of four species in ``folder``: enough for the "looks like" plumbing."""
    from stylegan.pokedex import save_pokedex
    from stylegan.pokedex.network import DexNet

    torch.manual_seed(0)
    return save_pokedex(DexNet(4, width=8), folder, [1, 2, 4, 7], POKEDEX_NAMES, {})


def write_fake_pretrained(root: Path, G: torch.nn.Module, name: str = "sprites-32") -> Path:
    """A ``pretrained/`` root holding ``name``: the export of ``G``, a tiny Pokédex and index.json (sha256s)."""
    from stylegan.checkpoint import export_generator
    from stylegan.io import sha256_file

    folder = root / name
    export_generator(G, folder)
    write_tiny_pokedex(folder / "pokedex")
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (root / "index.json").write_text(json.dumps({name: {"description": "a test model", "files": files}}, indent=2))
    return root
