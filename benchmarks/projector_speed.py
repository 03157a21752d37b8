"""Seconds per projector step (pixel loss only, and with the EfficientNet-Lite0 perceptual loss).

A freshly initialised generator of the chosen preset (speed does not depend on training). The
machine load is printed alongside, since shared machines skew figures.

    python benchmarks/projector_speed.py --model-preset cpu --resolution 32 --steps 40
    python benchmarks/projector_speed.py --device cuda --model-preset paper --resolution 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylegan.config import PRESETS, ModelConfig, from_dict
from stylegan.projector import load_perceptual, project
from stylegan.training.networks import Generator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--perceptual-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.model_preset]
    cfg = from_dict(ModelConfig, dict(preset.get("model", preset)), "model")
    cfg = replace(cfg, max_resolution=args.resolution)
    torch.manual_seed(0)
    G = Generator(cfg).eval().requires_grad_(False).to(args.device)
    target = np.random.RandomState(0).randint(0, 256, (args.resolution, args.resolution, 3)).astype(np.uint8)
    project(G, target, steps=2, num_frames=0)  # warm-up (first optimizer step imports lazily)
    print(f"{args.model_preset} generator at {args.resolution}x{args.resolution}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for name, perceptual in (("pixel", None), ("pixel+effnet", load_perceptual(args.perceptual_size, log=print))):
        if name != "pixel" and perceptual is None:
            continue
        if perceptual is not None:
            perceptual = perceptual.to(args.device)
        start = time.perf_counter()
        project(G, target, steps=args.steps, perceptual=perceptual, num_frames=0)
        sec = (time.perf_counter() - start) / args.steps
        print(f"{name:13s} {sec * 1000:8.1f} ms/step   ({500 * sec:6.1f} s for the default 500 steps)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
