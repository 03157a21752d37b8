"""Fault injection for tests/faults: child processes that SIGKILL themselves at a chosen event, a full disk.

Children come from a forkserver that has torch, the library and the flows imported once, so a
child costs a fork, not a Python start (the kill tests start a few dozen). A child arms its
kill points with ``arm`` and then runs the real code path (``pokegan train``, ``prepare``,
``flows.train.publish``, the sample writer); the kill is ``SIGKILL`` to itself, so nothing of
Python's (finally, atexit, buffers) runs, as with ``kill -9`` or the OOM killer.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import importlib
import io
import multiprocessing
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Kill = tuple[str, int, str]  # (event kind, kill at the count-th matching event, match)
_CTX: Any = None


def context() -> Any:
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        # torch._dynamo: Adam's constructor imports it (seconds), once here instead of in every child.
        _CTX.set_forkserver_preload(["torch", "torch._dynamo", "stylegan.training.trainer", "stylegan.cli",
                                     "stylegan.data.prepare", "flows.train", "flows.sample", "tests.faults._faultlib"])
    return _CTX


def _with_stderr(path: str, target: Callable[..., Any], *args: Any) -> None:
    # Forkserver children write to the forkserver's stderr, not the test's: send it to a file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    target(*args)


def run_child(target: Callable[..., Any], *args: Any, timeout: float = 120.0, stderr: Path | None = None) -> int:
    """Run ``target(*args)`` in a forked child; its exit code (-9 when it killed itself).
    With ``stderr``, the child's standard error is appended to that file."""
    if stderr is not None:
        target, args = _with_stderr, (str(stderr), target, *args)
    p = context().Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise TimeoutError(f"child {getattr(target, '__name__', target)} ran over {timeout} s")
    return int(p.exitcode)


def _die(note: str, log: str | None) -> None:
    if log:
        with open(log, "a") as f:
            f.write(note + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _matches(match: str, *paths: Any) -> bool:
    if match.startswith("src="):
        return str(paths[0]) == match[4:]
    if match.startswith("dst="):
        return len(paths) > 1 and str(paths[1]) == match[4:]
    return any(match in str(p) for p in paths)


def arm(kind: str, count: int, match: str = "", log: str | None = None) -> None:
    """SIGKILL this process at the ``count``-th event of ``kind`` that ``match``es.

    Kinds: ``step`` (an Adam step), ``fsync`` (of a file whose path contains ``match``; the
    temp file is written but not renamed), ``replace`` (before an ``os.replace``; ``match`` is a
    substring, or ``src=PATH`` / ``dst=PATH``), ``rmtree`` (before ``shutil.rmtree``), ``call``
    (before ``module:attr`` or ``module:Class.attr`` runs).
    """
    seen = [0]

    def hit(detail: str) -> None:
        seen[0] += 1
        if seen[0] == count:
            _die(f"{kind} {count} {detail}", log)

    if kind == "step":
        import torch

        orig_step = torch.optim.Adam.step

        def step(self: Any, *a: Any, **k: Any) -> Any:
            hit("adam")
            return orig_step(self, *a, **k)

        torch.optim.Adam.step = step
    elif kind == "fsync":
        orig_fsync = os.fsync

        def fsync(fd: int) -> None:
            with contextlib.suppress(OSError):
                path = os.readlink(f"/proc/self/fd/{fd}")
                if _matches(match, path):
                    hit(path)
            orig_fsync(fd)

        os.fsync = fsync
    elif kind == "replace":
        orig_replace = os.replace

        def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if _matches(match, src, dst):
                hit(f"{src} -> {dst}")
            orig_replace(src, dst, *a, **k)

        os.replace = replace
    elif kind == "rmtree":
        orig_rmtree = shutil.rmtree

        def rmtree(path: Any, *a: Any, **k: Any) -> None:
            if _matches(match, path):
                hit(str(path))
            orig_rmtree(path, *a, **k)

        shutil.rmtree = rmtree
    elif kind == "call":
        module, attr = match.split(":")
        owner: Any = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        orig = getattr(owner, name)

        def call(*a: Any, **k: Any) -> Any:
            hit(match)
            return orig(*a, **k)

        setattr(owner, name, call)
    else:
        raise ValueError(f"unknown kill kind {kind!r}")


# ----------------------------------------------------------------------------- children


def train_child(argv: list[str], kills: list[Kill], log: str | None) -> None:
    """``pokegan train ARGV`` with kill points armed (exit code = the CLI's)."""
    for kind, count, match in kills:
        arm(kind, count, match, log)
    from stylegan.cli import main

    sys.exit(main(argv))


def prepare_child(data: dict[str, Any], root: str, kills: list[Kill], log: str | None) -> None:
    from stylegan.config import DataConfig, from_dict
    from stylegan.data.prepare import prepare

    cfg = from_dict(DataConfig, data, "data")
    for kind, count, match in kills:
        arm(kind, count, match, log)
    prepare(cfg, root, workers=1, log=lambda _: None)


def publish_job(spec: dict[str, Any]) -> Any:
    """The ``TrainJob`` ``flows.train.publish`` takes, from plain values (children cannot share clients)."""
    from flows.tracking import store
    from flows.train import TrainJob
    from stylegan.config import load_params, section

    os.environ["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]
    params = load_params(spec["params"])
    return TrainJob(model_cfg=section(params, "model"), train_cfg=section(params, "train"),
                    data_root=Path(spec["data_root"]), run_dir=Path(spec["run_dir"]),
                    export_dir=Path(spec["export_dir"]), registered_path=Path(spec["registered"]),
                    tracking_uri=store.setup(spec["root"]).tracking_uri, registry=section(params, "registry"),
                    mlflow_run_id=spec["run_id"], key=spec["key"])


def publish_child(spec: dict[str, Any], kills: list[Kill], log: str | None) -> None:
    from flows.train import publish

    job = publish_job(spec)
    for kind, count, match in kills:
        arm(kind, count, match, log)
    publish(job, spec["resolution"], log=lambda _: None)


def sample_child(export_dir: str, seeds: list[int], out_dir: str, kills: list[Kill], log: str | None) -> None:
    from flows.sample import _write_samples
    from stylegan.checkpoint import load_generator

    G = load_generator(export_dir)
    for kind, count, match in kills:
        arm(kind, count, match, log)
    _write_samples(G, seeds, 0.7, "const", Path(out_dir))


def disk_child(argv: list[str], under: str, budget: int) -> None:
    """``pokegan ARGV`` with every file under ``under`` limited to ``budget`` bytes (then ENOSPC)."""
    from stylegan.cli import main

    with full_disk(Path(under), budget):
        code = main(argv)
    sys.exit(code)


class _LockStore:
    """Trainer callback that locks the SQLite tracking store at its ``at``-th tick (the store goes
    down mid-run): another connection holds an exclusive lock, so MLflow's writes time out."""

    def __init__(self, db: str, at: int) -> None:
        self.db, self.at, self.ticks, self.conn = db, at, 0, None

    def on_tick(self, stats: dict[str, Any]) -> None:
        import sqlite3

        self.ticks += 1
        if self.ticks == self.at:
            self.conn = sqlite3.connect(self.db, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")


def tracked_train_child(params: str, data: str, run_dir: str, export: str, uri: str, run_id: str,
                        lock_at_tick: int) -> None:
    """What the train flow's stage task runs: the Trainer with the MLflow callback (and an export).
    Exit 3 with the callback's one-line message when the store goes down."""
    import torch

    from flows.tracking import callback, store
    from stylegan.config import load_params, section
    from stylegan.training import Trainer

    torch.set_num_threads(1)  # as `pokegan train --threads 1`, so the weights can be compared bit for bit
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = load_params(params)
    client = store.setup(Path(run_dir).parent)
    callbacks: list[Any] = [callback.MlflowTrainingCallback(client, run_id)]
    if lock_at_tick:
        callbacks.insert(0, _LockStore(uri.removeprefix("sqlite:///"), lock_at_tick))
    trainer = Trainer(section(cfg, "model"), section(cfg, "train"), data, run_dir, device="cpu", callbacks=callbacks)
    try:
        trainer.run()
    except callback.TrackingUnavailable as exc:
        print(f"train: error: {exc}", file=sys.stderr, flush=True)
        os._exit(3)
    trainer.export(export)


# ----------------------------------------------------------------------------- full disk


class _FullFile:
    """A writable file that raises ENOSPC once ``budget`` bytes went into it (as a full disk does)."""

    def __init__(self, f: Any, budget: int) -> None:
        self._f = f
        self._left = budget

    def write(self, data: Any) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            self._f.write(bytes(memoryview(data).cast("B")[: self._left]))
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@contextlib.contextmanager
def full_disk(under: Path, budget: int = 4096) -> Iterator[list[str]]:
    """Files opened for writing under ``under`` take ``budget`` bytes, then raise ENOSPC.

    Patches ``open`` (builtins and io) and ``os.fdopen``, so every writer of the library is
    covered whatever module it lives in. Yields the paths that ran out of space.
    """
    under = Path(under).resolve()
    hits: list[str] = []
    real_open, real_fdopen = builtins.open, os.fdopen

    def wrap(f: Any, mode: str) -> Any:
        if not any(c in mode for c in "wax+"):
            return f
        with contextlib.suppress(OSError, ValueError):
            path = Path(os.readlink(f"/proc/self/fd/{f.fileno()}"))
            if path.is_relative_to(under):
                hits.append(str(path))
                return _FullFile(f, budget)
        return f

    def fake_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        return wrap(real_open(file, mode, *a, **k), mode)

    def fake_fdopen(fd: int, mode: str = "r", *a: Any, **k: Any) -> Any:
        return wrap(real_fdopen(fd, mode, *a, **k), mode)

    builtins.open, io.open, os.fdopen = fake_open, fake_open, fake_fdopen
    try:
        yield hits
    finally:
        builtins.open, io.open, os.fdopen = real_open, real_open, real_fdopen


# ----------------------------------------------------------------------------- small helpers


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def siblings(path: Path) -> list[str]:
    """Temp / old copies next to ``path`` (what a killed swap may leave)."""
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*"))


# ----------------------------------------------------------------------------- one tiny project per session

_PROJECT: dict[str, Any] = {}
# Smaller than tests/flows_helpers.TINY: 4x4 -> 8x8, 12 steps, a checkpoint after every step, so
# a kill lands near a checkpoint and the few dozen processes stay cheap on a shared machine.
FAULT_PARAMS: dict[str, dict[str, Any]] = {
    "data": {"max_resolution": 8, "min_size": 8},
    "model": {"max_resolution": 8},
    "train": {"start_resolution": 4, "fade_kimg": 0.032, "stab_kimg": 0.032, "batch_size": 8, "tick_kimg": 0.008,
              "snapshot_kimg": 0.008, "grid_seeds": [0], "keep_checkpoints": 2},
}


def tiny_project(base: Path) -> dict[str, Any]:
    """Params, packed data, one fully trained tiny run (in a child, one thread) and its export,
    made once per session and shared by the fault tests. ``project[1]`` is a second run dir that
    holds only the run's 4x4 stage checkpoint: its export is other weights, at no training cost."""
    if _PROJECT:
        return _PROJECT
    import time

    from tests.flows_helpers import packed_data, tiny_params, write_params

    base.mkdir(parents=True, exist_ok=True)
    data = packed_data(base / "data" / "prepared", n=16, max_resolution=8)
    params = write_params(base / "params.yaml", tiny_params(**FAULT_PARAMS))
    run_dir, export = base / "run0", base / "export0"
    t0 = time.perf_counter()
    code = run_child(train_child, train_argv(params, data, run_dir, export), [], None)
    assert code == 0, f"reference training exited {code}"
    seconds = time.perf_counter() - t0
    early = base / "run1" / "checkpoints"
    early.mkdir(parents=True)
    shutil.copyfile(run_dir / "checkpoints" / "stage-4.pt", early / "stage-4.pt")
    _PROJECT.update({"root": base, "data": data, "params": params, "seconds": seconds,
                     0: {"run_dir": run_dir, "export": export}, 1: {"run_dir": base / "run1"}})
    return _PROJECT


def train_argv(params: Path, data: Path, run_dir: Path, export: Path) -> list[str]:
    return ["train", "--params", str(params), "--data", str(data), "--run-dir", str(run_dir), "--threads", "1",
            "--export", str(export)]
