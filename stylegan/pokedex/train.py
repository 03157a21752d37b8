"""Training the Pokédex: the split by animation, the training loop, the held-out accuracy.

Labels are the manifest's ``species_id`` (national dex number, from the sprite's file name). The
frames of one animation (one GIF: the manifest's ``source``) are near copies of each other, so a
split by frame would measure memory, not recognition: the split is by animation instead. Per
species, ``pokedex.holdout`` of its animations (front, back, shiny, female variants) are held out,
seeded; at least one stays in training, and a species with a single animation is trained on only.

The loop: Adam with a linear warm-up and cosine decay, cross entropy with label smoothing 0.1,
random horizontal flips and integer shifts of up to 2 pixels (white fill: the sprites' ground),
all drawn from seeded generators. On CPU the same data, params and seed give bit-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stylegan.config import PokedexConfig
from stylegan.pokedex.network import DexNet

LABEL_SMOOTHING = 0.1
MAX_SHIFT = 2  # pixels; the translation augmentation draws from -2..2 on each axis
WARMUP_FRACTION = 0.03  # of all steps, linear warm-up before the cosine decay
TRAIN_EVAL_ROWS = 4096  # train top-1 is measured on at most this many (evenly spaced) training images
EVAL_BATCH = 512


class NoSpeciesError(ValueError):
    """The prepared data has fewer than two labelled species: there is nothing to tell apart."""


@dataclass(frozen=True)
class Split:
    """Rows of ``images_<R>.npy`` for training and held out, with class labels (index into ``species_ids``)."""

    train: np.ndarray  # int64 rows
    train_labels: np.ndarray  # int64 classes
    held_out: np.ndarray
    held_out_labels: np.ndarray
    species_ids: list[int]  # class -> national dex number, sorted
    train_animations: int
    held_out_animations: int
    rows: int  # manifest rows used (status ok, with a species id)
    unlabelled: int  # ok rows without a species id (dropped)
    held_out_species: int = field(default=0)  # species with at least one held-out animation

    def counts(self) -> dict[str, int]:
        return {"species": len(self.species_ids), "rows": self.rows, "unlabelled_rows": self.unlabelled,
                "train_images": len(self.train), "held_out_images": len(self.held_out),
                "train_animations": self.train_animations, "held_out_animations": self.held_out_animations,
                "held_out_species": self.held_out_species}


def read_manifest(data_root: str | Path) -> Any:
    """``manifest.csv`` of a prepared folder (pandas), checked for the columns the split needs."""
    import pandas as pd

    path = Path(data_root) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `dvc repro prepare` (or `pokegan prepare`) first")
    manifest = pd.read_csv(path, low_memory=False)
    missing = {"source", "species_id", "status", "index"} - set(manifest.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; re-run the prepare stage")
    return manifest


def split_by_animation(manifest: Any, holdout: float, seed: int) -> Split:
    """Held-out animations per species (whole GIFs, never single frames), seeded and deterministic.

    A species with ``n >= 2`` animations holds out ``holdout * n`` of them, rounded up or down at
    random with the fraction as the probability (so about ``holdout`` of all animations overall,
    also when most species have four), and never all of them.
    """
    import pandas as pd

    ok = manifest[manifest["status"] == "ok"]
    species = pd.to_numeric(ok["species_id"], errors="coerce")
    labelled = ok[species.notna()].assign(species_id=species[species.notna()].astype("int64"))
    labelled = labelled.assign(index=pd.to_numeric(labelled["index"], errors="coerce"))
    if labelled["index"].isna().any() or (labelled["index"] < 0).any():
        raise ValueError("manifest rows with status ok must have an index >= 0 (the row in images_<R>.npy); "
                         "re-run the prepare stage")
    species_ids = sorted(int(s) for s in labelled["species_id"].unique())
    if len(species_ids) < 2:
        raise NoSpeciesError(
            f"the prepared data has {len(species_ids)} labelled species; the Pokédex needs at least 2 (the manifest's "
            "species_id comes from numeric file names such as 25.png or 201-a.gif)")
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    held_species = 0
    groups = labelled.groupby("species_id", sort=True)["source"]
    for _, sources in groups:
        names = sorted(set(sources))
        n = len(names)
        want = holdout * n
        k = min(int(want) + int(rng.random() < want - int(want)), n - 1)  # n = 1 -> 0
        if k > 0:
            held.update(names[i] for i in rng.permutation(n)[:k])
            held_species += 1
    cls = {s: i for i, s in enumerate(species_ids)}
    is_held = labelled["source"].isin(held).to_numpy()
    rows = labelled["index"].to_numpy(np.int64)
    labels = labelled["species_id"].map(cls).to_numpy(np.int64)
    order = np.argsort(rows, kind="stable")  # in array order: the same split whatever the manifest order
    rows, labels, is_held = rows[order], labels[order], is_held[order]
    return Split(train=rows[~is_held], train_labels=labels[~is_held], held_out=rows[is_held],
                 held_out_labels=labels[is_held], species_ids=species_ids,
                 train_animations=labelled["source"].nunique() - len(held), held_out_animations=len(held),
                 rows=len(labelled), unlabelled=len(ok) - len(labelled), held_out_species=held_species)


def augment(images: torch.Tensor, gen: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """uint8 ``(B, 3, R, R)``: each image mirrored with probability 1/2 and shifted by -max_shift..max_shift
    pixels on each axis (the uncovered border white), from ``gen``."""
    b, c, h, w = images.shape
    flip = torch.rand(b, generator=gen) < 0.5
    shift = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    x = torch.where(flip[:, None, None, None], images.flip(3), images)
    if max_shift == 0:
        return x
    x = F.pad(x, (max_shift,) * 4, value=255)
    rows = (torch.arange(h)[None, :] + shift[:, :1]).to(x.device)  # (B, R)
    cols = (torch.arange(w)[None, :] + shift[:, 1:]).to(x.device)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * max_shift))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _lr_at(step: int, total: int, lr: float) -> float:
    warm = max(1, round(WARMUP_FRACTION * total))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _prepare(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def topk_accuracy(net: DexNet, images: torch.Tensor, rows: np.ndarray, labels: np.ndarray,
                  device: torch.device, ks: tuple[int, ...] = (1, 5), channels_last: bool = False) -> dict[int, float]:
    """Share of ``rows`` whose label is among the ``k`` most likely classes, for each k (eval mode)."""
    if len(rows) == 0:
        return {}
    was_training = net.training
    net.eval()
    hits = dict.fromkeys(ks, 0)
    kmax = min(max(ks), net.num_classes)
    for i in range(0, len(rows), EVAL_BATCH):
        x = _prepare(images[torch.from_numpy(rows[i : i + EVAL_BATCH])], device, channels_last)
        y = torch.from_numpy(labels[i : i + EVAL_BATCH]).to(device)
        top = net(x).topk(kmax, dim=1).indices
        for k in ks:
            hits[k] += int((top[:, :k] == y[:, None]).any(dim=1).sum())
    net.train(was_training)
    return {k: hits[k] / len(rows) for k in ks}


def fit(cfg: PokedexConfig, images: torch.Tensor, split: Split, device: str | torch.device = "cpu", *,
        channels_last: bool = True, on_epoch: Callable[[Mapping[str, Any]], None] | None = None,
        eval_each_epoch: bool = False, log: Callable[[str], None] = print) -> tuple[DexNet, dict[str, Any]]:
    """Train a DexNet on ``split`` of ``images`` (uint8 ``(N, 3, R, R)``); returns it (eval mode) and
    its accuracies. ``on_epoch`` gets each epoch's loss, lr, running accuracy and seconds (and the
    held-out accuracy with ``eval_each_epoch``). The global RNG is left as it was."""
    device = torch.device(device)
    n = len(split.train)
    if n == 0:
        raise NoSpeciesError("the training split is empty; re-run the prepare stage")
    gen = torch.Generator().manual_seed(cfg.seed)
    train_rows = torch.from_numpy(split.train)
    train_labels = torch.from_numpy(split.train_labels)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # init and dropout draw from the global RNG: seed it, then restore
        torch.manual_seed(cfg.seed)
        net = DexNet(len(split.species_ids), cfg.width, cfg.resolution).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        net.train()
        step = 0
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            loss_sum, correct = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                pick = perm[i : i + cfg.batch_size]
                x = _prepare(augment(images[train_rows[pick]], gen), device, channels_last)
                y = train_labels[pick].to(device)
                lr = _lr_at(step, total, cfg.lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(pick)
                correct += int((logits.argmax(1) == y).sum())
                step += 1
            stats: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / n, "lr": lr, "running_top1": correct / n,
                                     "seconds": time.perf_counter() - t0}
            if eval_each_epoch and len(split.held_out):
                acc = topk_accuracy(net, images, split.held_out, split.held_out_labels, device,
                                    channels_last=channels_last)
                stats.update(held_out_top1=acc[1], held_out_top5=acc[5])
            log("epoch {epoch}/{total}: loss {loss:.3f}, running top-1 {running_top1:.3f}, {seconds:.1f} s".format(
                total=cfg.epochs, **stats) + (f", held-out top-1 {stats['held_out_top1']:.3f}"
                                              if "held_out_top1" in stats else ""))
            if on_epoch is not None:
                on_epoch(stats)
    seconds = time.perf_counter() - start
    net.eval()
    held = topk_accuracy(net, images, split.held_out, split.held_out_labels, device, channels_last=channels_last)
    pick = np.linspace(0, n - 1, min(n, TRAIN_EVAL_ROWS)).round().astype(np.int64)
    train_acc = topk_accuracy(net, images, split.train[pick], split.train_labels[pick], device, ks=(1,),
                              channels_last=channels_last)
    net = net.to(memory_format=torch.contiguous_format).cpu()
    metrics = {"top1": held.get(1), "top5": held.get(5), "train_top1": train_acc[1], "train_seconds": seconds,
               "seconds_per_epoch": seconds / cfg.epochs}
    return net, metrics


def load_images(data_root: str | Path, resolution: int) -> torch.Tensor:
    """``images_<R>.npy`` of a prepared folder, in memory, as a uint8 tensor (N, 3, R, R)."""
    from stylegan.training.dataset import PackedDataset, array_path

    if not array_path(data_root, resolution).is_file():
        try:
            PackedDataset(data_root, resolution)  # its message lists the resolutions that are there
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"pokedex.resolution is {resolution}: {exc}; prepare with data.max_resolution >= "
                                    f"{resolution} or set pokedex.resolution to one of those") from None
    return torch.from_numpy(np.ascontiguousarray(PackedDataset(data_root, resolution, mmap=False).array))


def train_pokedex(cfg: PokedexConfig, data_root: str | Path, out_dir: str | Path, *, names: Mapping[int, str],
                  device: str | torch.device = "cpu", on_epoch: Callable[[Mapping[str, Any]], None] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, train, measure and save a Pokédex into ``out_dir`` (swapped in whole); returns its info
    (what ``pokedex.json`` holds besides the architecture and the label map)."""
    from stylegan.io import replace_dir, sha256_file
    from stylegan.metrics.reference import file_hash
    from stylegan.pokedex.names import species_names
    from stylegan.pokedex.store import save_pokedex

    data_root = Path(data_root)
    manifest = read_manifest(data_root)
    images = load_images(data_root, cfg.resolution)
    split = split_by_animation(manifest, cfg.holdout, cfg.seed)
    top = int(max(split.train.max(initial=-1), split.held_out.max(initial=-1)))
    if top >= len(images):
        raise ValueError(f"{data_root / 'manifest.csv'} names row {top} but images_{cfg.resolution}.npy has "
                         f"{len(images)}; the folder is inconsistent: re-run the prepare stage")
    counts = split.counts()
    log(f"{counts['species']} species: {counts['train_images']} training images ({counts['train_animations']} "
        f"animations), {counts['held_out_images']} held out ({counts['held_out_animations']} animations)")
    net, metrics = fit(cfg, images, split, device, on_epoch=on_epoch, log=log)
    info = {
        "data_digest": file_hash(data_root / f"images_{cfg.resolution}.npy"),  # blake2b, as evaluation's reference
        "manifest_sha256": sha256_file(data_root / "manifest.csv"),
        "manifest_rows": split.rows, "split": counts, "holdout": cfg.holdout, "names_package": cfg.names_package,
        "epochs": cfg.epochs, "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr,
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
    }
    names_list = species_names(names, split.species_ids)
    replace_dir(out_dir, lambda tmp: save_pokedex(net, tmp, split.species_ids, names_list, info),
                what="Pokédex model")
    return info
