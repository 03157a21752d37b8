"""Training speed of the Pokédex (stylegan/pokedex): seconds per epoch by width, threads and memory format.

    python benchmarks/pokedex_speed.py [--data data/prepared] [--widths 8,16] [--threads 1] [--steps 20]

Times ``--steps`` training steps (batch 128, the flip + shift augmentation, Adam) on random draws of
``images_32.npy`` and scales them to one epoch of the default split (24,265 training images).
Report `uptime` with the figures: on a busy 2-core machine two threads can be far slower than one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stylegan.pokedex.network import DexNet
from stylegan.pokedex.train import augment

TRAIN_IMAGES = 24265  # the default data's training split (pokedex.holdout 0.15, seed 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--widths", default="8,16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.from_numpy(np.load(Path(args.data) / "images_32.npy"))
    for width in (int(w) for w in args.widths.split(",")):
        for channels_last in (True, False):
            torch.manual_seed(0)
            net = DexNet(671, width)
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(net.parameters(), 2e-3)
            gen = torch.Generator().manual_seed(0)
            labels = torch.randint(0, 671, (args.batch,), generator=gen)

            def step(net: DexNet = net, opt: torch.optim.Optimizer = opt, gen: torch.Generator = gen,
                     channels_last: bool = channels_last, labels: torch.Tensor = labels) -> None:
                x = augment(images[torch.randint(0, len(images), (args.batch,), generator=gen)], gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(net(x), labels, label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sec = (time.perf_counter() - start) / args.steps
            print(f"width {width:3d}  channels_last {channels_last!s:5}  threads {args.threads}  "
                  f"{sec * 1000:6.0f} ms/step  {sec * TRAIN_IMAGES / args.batch:6.1f} s/epoch", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
