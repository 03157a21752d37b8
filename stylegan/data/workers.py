"""Supervised decode workers: a crash or a hang costs one file, never the run.

``multiprocessing.Pool.imap`` waits forever for a result that an OOM-killed or segfaulted
worker will never send, and a decoder that loops blocks it the same way. Here each worker
reports every file it finishes, so the supervisor always knows which file a worker is on:

- a worker that dies (any signal, any exit) takes only that file with it: the file gets a
  ``crashed_decoder`` row naming how the worker died, a fresh worker replaces it, and the
  rest of its chunk goes on there;
- a file that takes longer than ``data.decode_timeout`` seconds gets a ``timeout`` row: its
  worker is killed and replaced the same way;
- a worker that cannot even start (three times in a row) fails the run with an error instead
  of being restarted forever; so nothing here can wait without end.

Workers are forked from a fork server that has already imported the decoders (cheap to
replace, and safe to start from a threaded parent such as a Prefect flow). They ignore
SIGINT: Ctrl-C reaches the parent, whose ``close()`` stops them.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from stylegan.config import DataConfig
from stylegan.data.sources import InputItem
from stylegan.data.writer import FrameResult

STARTUP_TIMEOUT = 120.0  # seconds for a new worker to import and report ready (busy machines)
MAX_START_FAILURES = 3  # workers in a row that die before ready: the run fails instead of looping
# Imported once by the fork server, not by every worker. Third-party only: Python 3.11's fork
# server imports with its own sys.path (the working folder first), not the parent's, so our own
# modules are left to each worker, which gets the parent's sys.path.
_PRELOAD = ["numpy", "PIL.Image", "PIL.PngImagePlugin", "PIL.GifImagePlugin", "pandas", "cairosvg"]


def _worker_main(conn: Connection, cfg: DataConfig, initializer: Callable[[], None] | None) -> None:
    """Decode what the parent sends, one ``("item", job, index, rows)`` message per file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it then stops us
    from PIL import Image

    from stylegan.data.item import prepare_item

    if initializer is not None:
        initializer()
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # PIL warns above this and raises above twice it
    zips: dict[str, Any] = {}
    conn.send(("ready",))
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            job_id, start, items = msg
            for offset, item in enumerate(items):
                conn.send(("item", job_id, start + offset, prepare_item(item, cfg, zips)))
    except (EOFError, BrokenPipeError):
        return  # the parent went away
    finally:
        for zf in zips.values():
            zf.close()


@dataclass
class _Job:
    id: int
    items: list[InputItem]
    future: Future[list[FrameResult]]
    results: list[list[FrameResult] | None]
    next: int = 0  # first item not yet decoded


@dataclass
class _Worker:
    proc: Any  # multiprocessing Process
    conn: Connection
    started: float
    ready: bool = False
    job: _Job | None = None
    index: int = 0  # the item of ``job`` being decoded now
    since: float = field(default_factory=time.monotonic)  # when that item started


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {exitcode}"


class DecodePool:
    """``submit(items) -> Future[list[FrameResult]]`` (rows in item order), run by supervised workers.

    Thread-safe: Prefect's chunk tasks submit from several threads. Use as a context manager,
    or call ``close()``; ``imap(chunks)`` gives results in chunk order with a bounded window.
    """

    def __init__(
        self,
        cfg: DataConfig,  # the data params (decode_timeout, max_pixels, ...)
        workers: int = 1,  # processes (>= 1)
        initializer: Callable[[], None] | None = None,  # importable function run first in each worker; None = none
        log: Callable[[str], None] | None = None,  # one line per crash or timeout; None = silent
        context: str = "forkserver",  # multiprocessing start method
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.cfg = cfg
        self.n_workers = workers
        self.timeout = float(cfg.decode_timeout)
        self.initializer = initializer
        self.log = log or (lambda _: None)
        self.ctx = multiprocessing.get_context(context)
        if context == "forkserver":
            self.ctx.set_forkserver_preload(_PRELOAD)
        self._lock = threading.Lock()
        self._pending: collections.deque[_Job] = collections.deque()
        self._ids = itertools.count()
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self._stop = False
        self._wake_r, self._wake_w = self.ctx.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._supervise, name="decode-supervisor", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, items: Sequence[InputItem]) -> Future[list[FrameResult]]:
        fut: Future[list[FrameResult]] = Future()
        items = list(items)
        if not items:
            fut.set_result([])
            return fut
        with self._lock:
            if self._stop:
                raise RuntimeError("the decode pool is closed")
            self._pending.append(_Job(next(self._ids), items, fut, [None] * len(items)))
        self._wake()
        return fut

    def imap(self, chunks: Iterable[Sequence[InputItem]], ahead: int | None = None) -> Iterator[list[FrameResult]]:
        """Results chunk by chunk, in order; at most ``ahead`` chunks (default 2 per worker) in
        flight or waiting, and each is let go once yielded (bounded memory at any size)."""
        ahead = ahead or 2 * self.n_workers
        it = iter(chunks)
        window: collections.deque[Future[list[FrameResult]]] = collections.deque()
        for chunk in itertools.islice(it, ahead):
            window.append(self.submit(chunk))
        while window:
            fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append(self.submit(nxt))
            yield fut.result()

    def close(self) -> None:
        """Stop the workers (killing any still busy) and fail what is still pending."""
        with self._lock:
            self._stop = True
        self._wake()
        self._thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ supervisor thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: the supervisor is gone already
            self._wake_w.send_bytes(b"x")

    def _supervise(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stop:
                        break
                self._fill()
                self._dispatch()
                self._step()
        except BaseException as exc:  # a bug here must fail the callers, not leave them waiting
            self._fail_all(exc)
        finally:
            self._fail_all(CancelledError("the decode pool was closed"))
            for w in list(self._workers):
                self._stop_worker(w)

    def _fill(self) -> None:
        while len(self._workers) < self.n_workers:
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=_worker_main, args=(child, self.cfg, self.initializer),
                                    name="pokegan-decode", daemon=True)
            proc.start()
            child.close()
            self._workers.append(_Worker(proc, parent, started=time.monotonic()))

    def _dispatch(self) -> None:
        for w in self._workers:
            if not (w.ready and w.job is None):
                continue
            with self._lock:
                if not self._pending:
                    return
                job = self._pending.popleft()
            if job.future.cancelled():
                continue
            w.job, w.index, w.since = job, job.next, time.monotonic()
            with contextlib.suppress(OSError):  # the worker died: found on the next step, the job goes on
                w.conn.send((job.id, job.next, job.items[job.next :]))

    def _deadline(self, w: _Worker) -> float | None:
        if not w.ready:
            return w.started + STARTUP_TIMEOUT
        if w.job is not None:
            return w.since + self.timeout
        return None

    def _step(self) -> None:
        deadlines = [d for d in map(self._deadline, self._workers) if d is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        waitables: list[Any] = [self._wake_r]
        for w in self._workers:
            waitables += [w.conn, w.proc.sentinel]
        ready = wait(waitables, timeout)
        if self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        now = time.monotonic()
        for w in list(self._workers):
            alive = self._drain(w)
            if not alive or not w.proc.is_alive():
                w.proc.join(1)
                self._lost(w, "crashed_decoder", f"the decoder process {_death(w.proc.exitcode)} on this file")
                continue
            deadline = self._deadline(w)
            if deadline is not None and now > deadline:
                if w.ready:
                    self._lost(w, "timeout", f"decoding took longer than data.decode_timeout={self.timeout:g} s; "
                                             "the decoder process was stopped")
                else:
                    self._lost(w, "crashed_decoder", f"the decoder process did not start in {STARTUP_TIMEOUT:g} s")

    def _drain(self, w: _Worker) -> bool:
        """Handle every message the worker has sent; False when its pipe is broken (it died)."""
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.ready = True
                    self._start_failures = 0
                    continue
                _, job_id, index, rows = msg
                job = w.job
                if job is None or job.id != job_id:
                    continue
                job.results[index] = rows
                job.next = w.index = index + 1
                w.since = time.monotonic()
                if job.next == len(job.items):
                    self._complete(job)
                    w.job = None
        except (EOFError, OSError):
            return False
        except Exception:  # a message cut short by the worker's death does not unpickle
            return False
        return True

    def _lost(self, w: _Worker, code: str, detail: str) -> None:
        """The worker died or overran: its current file gets a row, the rest of its chunk goes on."""
        from stylegan.data.item import rejected_rows

        was_ready = w.ready
        self._stop_worker(w)
        job = w.job
        if job is not None and not job.future.done():
            item = job.items[w.index]
            job.results[w.index] = rejected_rows(item, code, detail)
            job.next = w.index + 1
            self.log(f"prepare: {item.path}: {code}: {detail}; a new decoder process takes over")
            if job.next == len(job.items):
                self._complete(job)
            else:
                with self._lock:
                    self._pending.appendleft(job)
        elif not was_ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise RuntimeError(f"decode workers stop before they are ready ({detail}); "
                                   "check that the stylegan package and Pillow import in a fresh process")

    def _stop_worker(self, w: _Worker) -> None:
        if w in self._workers:
            self._workers.remove(w)
        if w.proc.is_alive():
            if w.job is None and w.ready:
                try:
                    w.conn.send(None)  # an idle worker leaves on its own
                    w.proc.join(2)
                except OSError:
                    pass
            if w.proc.is_alive():
                w.proc.kill()
        w.proc.join(5)
        w.conn.close()

    def _complete(self, job: _Job) -> None:
        if not job.future.done():
            job.future.set_result([r for rows in job.results for r in rows or []])

    def _fail_all(self, exc: BaseException) -> None:
        jobs = [w.job for w in self._workers if w.job is not None]
        with self._lock:
            jobs += list(self._pending)
            self._pending.clear()
        for job in jobs:
            if not job.future.done():
                if isinstance(exc, CancelledError):
                    job.future.cancel()
                else:
                    job.future.set_exception(exc)

