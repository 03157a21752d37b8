"""Test-only worker initializers for ``prepare(..., worker_init=...)`` / ``DecodePool(initializer=...)``.

They run inside the decode worker processes (forked from a fork server, so a monkeypatch in
the test process never reaches them): these functions are imported there by name.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

# A file whose bytes hold one of these makes the (patched) decoder die or hang like a real
# decoder bug would: the supervisor must cost only that file.
CRASH = b"CRASH-THE-DECODER"  # SIGKILL, as the out-of-memory killer sends
SEGFAULT = b"SEGFAULT-THE-DECODER"  # SIGSEGV, as a crashing C decoder
HANG = b"HANG-THE-DECODER"  # a decoder stuck in a loop


def faulty_decoder() -> None:
    """Patch the worker's raster decoder to crash or hang on marked files."""
    from stylegan.data import item  # prepare_item's module: it looks decode_raster up there

    real = item.decode_raster

    def decode(data: bytes, *args: Any, **kwargs: Any) -> Any:
        if CRASH in data:
            os.kill(os.getpid(), signal.SIGKILL)
        if SEGFAULT in data:
            os.kill(os.getpid(), signal.SIGSEGV)
        if HANG in data:
            time.sleep(3600)
        return real(data, *args, **kwargs)

    item.decode_raster = decode


def audit_opens(log_dir: str) -> None:
    """Record every path this worker opens (``open`` audit events: built-in open, os.open, ...)
    to ``<log_dir>/<pid>.log``, one ``repr`` per line."""
    log = open(os.path.join(log_dir, f"{os.getpid()}.log"), "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            log.write(repr(os.fsdecode(args[0])) + "\n")

    sys.addaudithook(hook)
