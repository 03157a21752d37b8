"""Helpers shared by the library tests. Imports no prefect, mlflow or dvc (see tests/flows_helpers.py for those)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from stylegan.config import ModelConfig, TrainConfig
from stylegan.networks import Generator

if TYPE_CHECKING:  # not imported at run time: modules that need no trainer need not import it
    from stylegan.training import Trainer

# The CLI tests' model: 8x8 at most and narrow, so a whole schedule trains in seconds on CPU.
TINY_MODEL: dict[str, Any] = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 32, "fmap_max": 16,
                              "max_resolution": 8}

# The one colour of write_toy_data's images.
TOY_COLOUR = np.array([230, 60, 40], np.uint8)


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """The library tests' tiny model: 16-d latents, 2 mapping layers, at most 16 channels, built up to 16x16
    (TINY_MODEL, the CLI tests' model, is this at 8x8). Pass only what a test needs to differ."""
    base: dict[str, Any] = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 32, "fmap_max": 16,
                            "max_resolution": 16}
    return ModelConfig(**{**base, **overrides})


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """A CPU schedule of tiny stages (batch 4): 4x4 for 4 steps, then 8x8 fading in and stabilising, 12 steps
    in all; a tick every 2 steps, a snapshot every 5, 2 checkpoints kept."""
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
    base.update(overrides)
    return TrainConfig(**base)


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


def tiny_generator(resolution: int = 32) -> Generator:
    """A tiny real Generator (seeded 0, eval, no grad) with non-trivial noise strengths and w_avg, as after
    training."""
    torch.manual_seed(0)
    G = Generator(tiny_model_config(fmap_base=64, max_resolution=resolution)).eval().requires_grad_(False)
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


def write_fake_pretrained(root: Path, G: torch.nn.Module, name: str = "sprites-64") -> Path:
    """A ``pretrained/`` root holding ``name``: the export of ``G``, a tiny Pokédex and index.json (sha256s)."""
    from stylegan.checkpoint import export_generator
    from stylegan.io import sha256_file

    folder = root / name
    export_generator(G, folder)
    write_tiny_pokedex(folder / "pokedex")
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (root / "index.json").write_text(json.dumps({name: {"description": "a test model", "files": files}}, indent=2))
    return root
