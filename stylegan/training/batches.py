"""Real batches for the trainer: one dataset per resolution, indices from the seeded host stream,
background prefetch (rewound when unused, so it never changes which batches a run sees) and each
rank's rows of the global batch.

Every rank draws the whole global batch from the same stream and keeps its rows (whole
minibatch-stddev groups), so N processes see what one process sees.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stylegan.config import ModelConfig, TrainConfig
from stylegan.training import distributed
from stylegan.training.dataset import PackedDataset, available_resolutions
from stylegan.training.layers import downsample2x, upsample2x
from stylegan.training.prefetch import BatchPrefetcher
from stylegan.training.schedule import Phase, Stage, phase_at


def check_data(data_root: Path, stages: Sequence[Stage]) -> None:
    """Fail before training when a stage's images_<R>.npy is missing."""
    have = available_resolutions(data_root)
    missing = [s.resolution for s in stages if s.resolution not in have]
    if missing:
        raise FileNotFoundError(
            f"training data for resolution(s) {missing} is missing under {data_root} "
            f"(found {have or 'no images_<R>.npy files'}); prepare the data up to "
            f"{stages[-1].resolution} (data.max_resolution) or lower train.max_resolution"
        )


def check_sharding(stages: Sequence[Stage], train_cfg: TrainConfig, model_cfg: ModelConfig, world_size: int,
                   rank: int) -> None:
    """Every stage's batch must split evenly over the processes; warn when D's groups would shrink."""
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"world_size={world_size} needs torch.distributed initialised before the Trainer")
    distributed.check_global_batches(stages, train_cfg, world_size)
    for s in stages:
        B = train_cfg.batch_size_at(s.resolution)
        g = distributed.mbstd_group(B, model_cfg.mbstd_group_size)
        if world_size > 1 and rank == 0 and not distributed.groups_preserved(B, world_size, g):
            warnings.warn(
                f"batch size {B} at {s.resolution}x{s.resolution} over {world_size} processes leaves "
                f"{B // world_size} per process, not whole minibatch-stddev groups of {g}: D's groups "
                "shrink, so the run differs from a single-process one; use a batch that is a multiple "
                f"of {world_size * g}",
                stacklevel=3,
            )


class RankRows:
    """This rank's rows of a global batch (whole minibatch-stddev groups; all rows alone), on the
    CPU or on the training device; cached per batch size, so no copy per step."""

    def __init__(self, world_size: int, rank: int, group_size: int, device: torch.device) -> None:
        self.world_size, self.rank, self.group_size, self.device = world_size, rank, group_size, device
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch -> (CPU, device)

    def __call__(self, batch_size: int, on_device: bool = False) -> torch.Tensor:
        rows = self._cache.get(batch_size)
        if rows is None:
            cpu = distributed.shard_rows(batch_size, self.world_size, self.rank, self.group_size)
            rows = self._cache[batch_size] = (cpu, cpu.to(self.device))
        return rows[1] if on_device else rows[0]


class RealBatches:
    """This rank's real images for each step, drawn from ``index_gen`` (host) and flipped with
    ``device_gen``; both streams belong to the trainer's checkpointed state."""

    def __init__(self, data_root: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device,
                 index_gen: torch.Generator, device_gen: torch.Generator, rank_rows: RankRows) -> None:
        self.data_root, self.model_cfg, self.train_cfg, self.device = data_root, model_cfg, train_cfg, device
        self.index_gen, self.device_gen, self.rank_rows = index_gen, device_gen, rank_rows
        self.prefetcher = BatchPrefetcher(device=device) if train_cfg.prefetch else None
        self.pending_index_state: torch.Tensor | None = None  # index stream before the prefetched batch
        self._dataset: PackedDataset | None = None

    def dataset_for(self, resolution: int) -> PackedDataset:
        if self._dataset is None or self._dataset.resolution != resolution:
            self._dataset = PackedDataset(self.data_root, resolution)
        return self._dataset

    def draw_indices(self, ds: PackedDataset, B: int) -> np.ndarray:
        """The next global batch of B indices from the seeded host stream; this rank's rows."""
        return torch.randint(len(ds), (B,), generator=self.index_gen)[self.rank_rows(B)].numpy()

    def rewind_pending(self) -> None:
        """Drop a prefetched batch that will not be used; its indices go back to the stream."""
        if self.pending_index_state is not None:
            self.index_gen.set_state(self.pending_index_state)
            self.pending_index_state = None
        if self.prefetcher is not None:
            self.prefetcher.discard()

    def prefetch_next(self, phase: Phase, cur_nimg: int) -> None:
        """Draw the indices the step after ``phase``'s (at ``cur_nimg``) will use and gather them in
        the background.

        The next step is predicted from the schedule; a wrong guess (a new stage, or a caller
        passing its own phase) is rewound by ``reals``, so prefetching never changes which
        batches a run sees."""
        if self.prefetcher is None:
            return
        nxt = phase_at(self.train_cfg, self.model_cfg, (cur_nimg + phase.batch_size) / 1000.0)
        if nxt.resolution != phase.resolution:
            return  # a new stage opens another array; gathered in line at its first step
        ds = self.dataset_for(nxt.resolution)
        self.pending_index_state = self.index_gen.get_state()
        idx = self.draw_indices(ds, nxt.batch_size)
        self.prefetcher.submit((nxt.resolution, nxt.batch_size, len(ds)), ds, idx)

    def reals(self, phase: Phase) -> torch.Tensor:
        """This rank's rows of the batch, in [-1, 1], flipped and faded like G's output."""
        ds = self.dataset_for(phase.resolution)
        B = phase.batch_size
        key = (phase.resolution, B, len(ds))
        x = self.prefetcher.take(key) if self.prefetcher is not None else None
        if x is None:
            self.rewind_pending()
            x = ds.get_batch(self.draw_indices(ds, B)).to(self.device, non_blocking=True)
        self.pending_index_state = None  # the drawn indices are consumed now
        x = x.float() / 127.5 - 1.0
        if self.train_cfg.mirror:
            flip = torch.rand(B, generator=self.device_gen, device=self.device)[self.rank_rows(B, on_device=True)] < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if phase.alpha < 1.0:
            # During a fade D must see reals blended the way G's output is (Progressive GAN).
            x = torch.lerp(upsample2x(downsample2x(x)), x, phase.alpha)
        if self.train_cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def close(self) -> None:
        """Stop the prefetch worker, its batch's indices back in the stream."""
        if self.prefetcher is not None:
            self.rewind_pending()
            self.prefetcher.close()
