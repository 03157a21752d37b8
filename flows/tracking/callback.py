"""What training logs while it runs: the trainer callback (tick metrics, snapshot grids, stage ends)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric


class TrackingUnavailable(RuntimeError):
    """The tracking store stopped answering during training (the message says how to resume)."""


class MlflowTrainingCallback:
    """Trainer callback (``on_tick``/``on_snapshot``/``on_stage_end``) logging to one MLflow run.

    The step of every metric is the number of images shown, ``int(kimg * 1000)``. A resumed
    training retrains (bit for bit) the ticks after its checkpoint that an earlier attempt
    already logged; those are skipped, so each step appears once in the run's history.
    """

    # The usual keys; every other numeric tick stat (augment_p, ada_rt, ...) is logged as well.
    TICK_KEYS = ("loss_G", "loss_D", "r1", "images_per_sec", "sec_per_tick", "kimg", "resolution", "alpha", "lr",
                 "batch_size", "stage")

    SNAPSHOT_KEY = "snapshot"  # the image key in the UI; step = images shown

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        history = self._store(client.get_metric_history, run_id, "kimg", at=None)
        self.logged_step = max((m.step for m in history), default=-1)
        self.logged_snapshots = self._store(self._snapshot_steps, at=None)

    def _store(self, fn: Any, *args: Any, at: float | None) -> Any:
        """Call the store; when it is down, stop training with one clear line (README, "Faults").

        Training does not go on without its tracker: the trainer stops, its checkpoints stay, and
        the same command resumes from the newest one once the store answers again, logging the
        remaining metrics (steps already logged are skipped, so none appears twice).
        """
        try:
            return fn(*args)
        except Exception as exc:  # MlflowException, sqlite "database is locked", a refused connection
            where = f" at kimg {at:.3f}" if at is not None else ""
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrackingUnavailable(
                f"the MLflow tracking store {self.client.tracking_uri} did not answer{where} ({first}); training "
                "stopped and keeps its checkpoints: bring the store back (or free the locked database) and re-run "
                "the same command, it resumes from the newest checkpoint and logs the remaining metrics"
            ) from exc

    def _snapshot_steps(self) -> set[int]:
        # log_image names its files "<key>+step+<step>+timestamp+..."; a resume must not log a step twice.
        prefix = f"{self.SNAPSHOT_KEY}+step+"
        steps = set()
        for f in self.client.list_artifacts(self.run_id, "images"):
            name = Path(f.path).name
            if name.startswith(prefix):
                steps.add(int(name[len(prefix):].split("+", 1)[0]))
        return steps

    def on_tick(self, stats: Mapping[str, Any]) -> None:
        step = round(float(stats["kimg"]) * 1000)
        if step <= self.logged_step:
            return
        self.logged_step = step
        ts = int(time.time() * 1000)
        keys = [*self.TICK_KEYS, *sorted(set(stats) - set(self.TICK_KEYS))]
        metrics = [
            Metric(key, float(stats[key]), ts, step)
            for key in keys
            if key in stats and isinstance(stats[key], int | float) and not isinstance(stats[key], bool)
            and math.isfinite(stats[key])  # ada_rt is NaN before ADA's first adjustment
        ]
        if metrics:
            self._store(lambda: self.client.log_batch(self.run_id, metrics=metrics), at=float(stats["kimg"]))

    def on_snapshot(self, resolution: int, kimg: float, grid: Any, path: Path | None = None) -> None:
        # Every snapshot (including the one at each stage end) from the fixed train.grid_seeds, as
        # one image key whose step is the images shown: the UI's slider walks through training.
        step = round(float(kimg) * 1000)
        if step in self.logged_snapshots:
            return
        self._store(lambda: self.client.log_image(self.run_id, grid, key=self.SNAPSHOT_KEY, step=step), at=kimg)
        self.logged_snapshots.add(step)

    def on_stage_end(self, result: Any) -> None:
        step = round(float(result.kimg) * 1000)
        self._store(lambda: self.client.log_metric(self.run_id, "stage_seconds", float(result.seconds), step=step),
                    at=float(result.kimg))
        self._store(self.client.set_tag, self.run_id, f"stage.{result.resolution}.checkpoint", str(result.checkpoint),
                    at=float(result.kimg))
