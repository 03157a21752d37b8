"""Background gather of the next real batch: memory map -> (pinned) host memory -> device.

The trainer draws the indices (from its own seeded generator) and hands them over; one
worker thread gathers the rows from the memory-mapped array while the current step runs
(numpy releases the GIL while it copies). On CUDA the rows land in page-locked memory and
the worker starts the host-to-device copy on a side stream; the training stream waits for
that copy with an event, so neither the gather nor the copy blocks the host or the step.
Which batch arrives is decided entirely by the indices: prefetching changes when a batch
is read, never which.
"""

from __future__ import annotations

import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stylegan.training.dataset import PackedDataset
from stylegan.training.device import pin_memory_available


@dataclass
class _Ready:
    images: torch.Tensor  # uint8 (B, 3, R, R) on the target device (or on the host, not yet copied)
    event: Any  # torch.cuda.Event the copy recorded, or None


class BatchPrefetcher:
    """One batch in flight: ``submit(key, ds, idx)`` now, ``take(key)`` at the next step."""

    def __init__(
        self,
        *,
        device: torch.device,  # where the batches go
        pin: bool | None = None,  # page-locked staging; None = only when copying to CUDA
    ) -> None:
        self.device = device
        self.pin = pin_memory_available(device) if pin is None else pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pokegan-prefetch")
        weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: tuple[Any, Future[_Ready]] | None = None

    @property
    def pending_key(self) -> Any:
        return None if self._pending is None else self._pending[0]

    def submit(self, key: Any, dataset: PackedDataset, indices: np.ndarray) -> None:
        """Start gathering ``dataset`` rows ``indices``; ``key`` names the batch for ``take``."""
        self.discard()
        self._pending = (key, self._pool.submit(self._gather, dataset, np.asarray(indices, dtype=np.int64)))

    def take(self, key: Any) -> torch.Tensor | None:
        """The batch submitted under ``key`` as a uint8 tensor on the device, usable on the current
        stream; None (and the pending batch dropped) when a different key or nothing is pending."""
        if self._pending is None or self._pending[0] != key:
            self.discard()
            return None
        ready = self._pending[1].result()  # re-raises a failed gather in the training thread
        self._pending = None
        if ready.event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready.event)
            ready.images.record_stream(stream)  # the side stream's allocation is now used here
            return ready.images
        return ready.images.to(self.device, non_blocking=self.pin)

    def discard(self) -> None:
        """Drop the pending batch (waiting for its worker, so two gathers never overlap)."""
        if self._pending is not None:
            fut = self._pending[1]
            self._pending = None
            if not fut.cancel():
                fut.exception()  # wait; a failed gather nobody wants is dropped with it

    def close(self) -> None:
        self.discard()
        self._pool.shutdown(wait=True)

    def _gather(self, dataset: PackedDataset, indices: np.ndarray) -> _Ready:
        host = dataset.get_batch(indices)
        if self.pin:
            host = host.pin_memory()
        if self._stream is None:
            return _Ready(host, None)
        # The caching host allocator keeps the pinned block until the copy recorded on it is done.
        with torch.cuda.stream(self._stream):
            images = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return _Ready(images, event)
