"""Exceptions and small types that several modules share.

It imports nothing from the project, so any module can use these names without an import
cycle (``training`` and ``distributed`` both build ``StageResult``; the CLI and the studio
both raise ``PipelineMissing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PipelineMissing(RuntimeError):
    """A ``models:/`` URI without the pipeline extra (mlflow and the flows package) installed."""


@dataclass(frozen=True)
class StageResult:
    resolution: int
    kimg: float  # images shown (thousands) when the stage ended
    checkpoint: Path | None  # run_dir/checkpoints/stage-<R>.pt (None on ranks other than 0)
    seconds: float  # wall time spent training in this call (0 when the stage was already done)
