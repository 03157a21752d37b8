"""Exceptions and small types that several modules share.

It imports nothing from the project, so any module can use these names without an import
cycle: the CLI and the studio both raise ``PipelineMissing``; the trainer reports to a
``TrainerCallback`` with ``StageResult``s; under torchrun, rank 0's callback is an ``EventLog``
that the launching process (the CLI or the train flow) reads back with ``EventReader`` and
replays to its own callbacks with ``dispatch_event``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) importing each exported name from its module on first
    use, so that importing the package stays cheap (no torch or PIL until a name is needed)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


class PipelineMissing(RuntimeError):
    """A ``models:/`` URI without the pipeline extra (mlflow and the flows package) installed."""


@dataclass(frozen=True)
class StageResult:
    resolution: int
    kimg: float  # images shown (thousands) when the stage ended
    checkpoint: Path | None  # run_dir/checkpoints/stage-<R>.pt (None on ranks other than 0)
    seconds: float  # wall time spent training in this call (0 when the stage was already done)


class TrainerCallback(Protocol):
    """What a tracker may implement; every method is optional (looked up with getattr)."""

    def on_tick(self, stats: dict[str, Any]) -> None: ...

    def on_snapshot(self, resolution: int, kimg: float, grid: Any, path: Path) -> None: ...

    def on_stage_end(self, result: StageResult) -> None: ...


class EventLog:
    """Trainer callback (rank 0) appending each tick, snapshot and stage end as one JSON line.

    The process that launched torchrun tails the file (``follow_events``) and hands the events
    to its own callbacks: progress bars and trackers stay out of the training processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, event: dict[str, Any]) -> None:
        # One write() of a whole line: a reader never sees half an event followed by more data.
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()

    def on_tick(self, stats: dict[str, Any]) -> None:
        self._write({"event": "tick", "stats": stats})

    def on_snapshot(self, resolution: int, kimg: float, grid: Any, path: Path) -> None:
        self._write({"event": "snapshot", "resolution": resolution, "kimg": kimg, "path": str(path)})

    def on_stage_end(self, result: Any) -> None:
        self._write({"event": "stage_end", "resolution": result.resolution, "kimg": result.kimg,
                     "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
                     "seconds": result.seconds})


class EventReader:
    """Reads the complete lines an ``EventLog`` has appended since the last call."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def dispatch_event(event: dict[str, Any], callbacks: Iterable[Any]) -> None:
    """Call ``callbacks`` for one event as the trainer would have in this process."""
    from PIL import Image

    kind = event.get("event")
    for cb in callbacks:
        if kind == "tick" and hasattr(cb, "on_tick"):
            cb.on_tick(event["stats"])
        elif kind == "snapshot" and hasattr(cb, "on_snapshot"):
            path = Path(event["path"])
            with Image.open(path) as im:
                grid = im.copy()
            cb.on_snapshot(int(event["resolution"]), float(event["kimg"]), grid, path)
        elif kind == "stage_end" and hasattr(cb, "on_stage_end"):
            ckpt = event.get("checkpoint")
            cb.on_stage_end(StageResult(int(event["resolution"]), float(event["kimg"]),
                                        None if ckpt is None else Path(ckpt), float(event["seconds"])))
