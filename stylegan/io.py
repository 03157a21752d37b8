"""Atomic writes for the whole library: files (temp + fsync + rename) and whole output folders.

Rules (docs/interfaces.md, "Output files and folders"):

- A file is written to a temp file in the same folder, flushed and fsynced, then renamed over
  the target and the folder fsynced: a crash leaves the old file or the complete new one.
- An output folder is replaced only when it is recognisably the project's own (it holds the
  marker file ``OUTPUT_MARKER``, written when the project creates it) or is empty. The new
  content goes into a temp sibling first; the swap is two renames; the old content is removed
  after the swap. A crash leaves the old folder, the new one, or (between the two renames) a
  ``.NAME.old-PID-*`` sibling that the next ``replace_dir`` puts back before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

OUTPUT_MARKER = ".pokegan-output"  # present in every folder the project creates and may replace
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


def sha256_file(file: str | Path | IO[bytes]) -> str:
    """sha256 (hex) of a file's bytes, a path or an open binary file, read in 1 MiB blocks (weights
    and archives may not fit in memory twice)."""
    if isinstance(file, str | Path):
        with open(file, "rb") as f:
            return sha256_file(f)
    h = hashlib.sha256()
    while block := file.read(1 << 20):
        h.update(block)
    return h.hexdigest()


class OutputDirError(ValueError):
    """An output folder that the project must not replace (not its own, or a file)."""


def read_format_json(config: Path, fmt: str, what: str, fix: str, error: type[Exception]) -> dict[str, Any]:
    """``config`` parsed, or ``error`` saying it is corrupt or not a ``fmt`` file, and ``fix``."""
    try:
        info = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{config} is corrupt ({exc}); {fix}") from exc
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise error(f"{config} is not a pokegan {what} config; {fix}")
    return info


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Writes:
    """A file that remembers the OSError of a failed write: serialisers such as torch.save turn it
    into an opaque RuntimeError ("unexpected pos"), and a full disk must read as ENOSPC."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def _renamed_over(path: Path, suffix: str) -> Iterator[tuple[int, Path]]:
    """The one temp-then-rename of the library: ``(fd, name)`` of a fresh temp file beside
    ``path``; when the block ends it is fsynced, renamed over ``path`` and the folder fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        try:
            # mkstemp makes 0600 files; give the result the permissions a plain open() would, so a
            # tracker, a server or a teammate can read checkpoints, exports and images.
            os.chmod(tmp, 0o666 & ~_UMASK)
            yield fd, Path(tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(path)  # "[Errno 28] No space left on device: '<the file>'", not a bare errno
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temp file in the same folder, then rename.

    The temp file is flushed and fsynced before ``os.replace``, so a crash at any point leaves
    either the old file or the complete new one, and no temp file behind on a Python error
    (a full disk included: the ``OSError`` propagates, the old file is untouched).
    """
    path = Path(path)
    with _renamed_over(path, ".tmp") as (fd, _), os.fdopen(fd, "wb", closefd=False) as f:
        out = _Writes(f)
        try:
            write(out)
        except Exception as exc:
            if out.error is not None and out.error is not exc:
                raise out.error from exc
            raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """``atomic_write`` for writers that need a file name (ffmpeg): a temp file beside ``path``
    to write by name, renamed over ``path`` when the block ends without an error (and deleted
    when it raises). ``suffix`` ends the temp name: ffmpeg picks the container by it (only
    ``.tmp`` ones are ``remove_stale_temp_files``' to delete)."""
    with _renamed_over(Path(path), suffix) as (_, tmp):
        yield tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Indented, key-sorted JSON (``default=str`` for paths and the like), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_bytes(path, text.encode())


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files a killed process left behind (``.<name>.*.tmp``)."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# Output folders


def is_own_dir(folder: str | Path) -> bool:
    return (Path(folder) / OUTPUT_MARKER).is_file()


def check_replaceable(dest: str | Path, what: str = "output folder") -> None:
    """Raise ``OutputDirError`` unless ``dest`` is missing, empty, or marked as the project's own.

    Never the filesystem root, the home folder or a folder holding the working directory,
    whatever they contain.
    """
    dest = Path(dest).expanduser()
    full = dest.resolve()
    fix = f"pick a new or empty folder for the {what}"
    if dest.exists() and not dest.is_dir():
        raise OutputDirError(f"{what} {dest} is a file, not a folder; {fix}")
    if dest.is_symlink():
        raise OutputDirError(f"{what} {dest} is a symbolic link; {fix}")
    cwd = Path.cwd().resolve()
    if full == Path(full.anchor) or full == Path.home().resolve() or full == cwd or full in cwd.parents:
        raise OutputDirError(f"{what} {dest} is the root, home or working folder; it is never replaced: {fix}")
    if dest.is_dir() and any(dest.iterdir()) and not is_own_dir(dest):
        raise OutputDirError(
            f"{what} {dest} is a non-empty folder that pokegan did not create (no {OUTPUT_MARKER} in it); "
            f"it is never replaced or deleted: {fix}, or empty it yourself"
        )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a dead writer's temp folders may be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def recover_dir(dest: str | Path) -> list[Path]:
    """Clean up after a ``replace_dir`` that was killed; returns the folders removed or restored.

    Temp siblings (``.NAME.tmp-PID-*``) of dead writers are deleted; an old copy
    (``.NAME.old-PID-*``) whose writer died between the swap's two renames is put back when
    ``dest`` is missing, else deleted. Folders of live writers (another process) are left alone;
    our own pid's are leftovers too (in a container every run may get the same pid).
    """
    dest = Path(dest)
    done = []
    if not dest.parent.is_dir():
        return done
    for kind in ("old", "tmp"):  # restore first, so a missing dest gets its old copy back
        for folder in sorted(dest.parent.glob(f".{dest.name}.{kind}-*")):
            parts = folder.name.rsplit("-", 2)
            pid = parts[-2] if len(parts) == 3 else ""
            if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
                continue
            if kind == "old" and not dest.exists() and is_own_dir(folder):
                os.replace(folder, dest)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            done.append(folder)
    if done:
        fsync_dir(dest.parent)
    return done


def replace_dir(dest: str | Path, fill: Callable[[Path], Any], what: str = "output folder") -> Any:
    """Build a new ``dest`` with ``fill(tmp_folder)``, then swap it in; returns what ``fill`` returned.

    ``dest`` must be missing, empty or marked (``check_replaceable``; checked before ``fill``
    runs, so a refused folder costs nothing). ``fill`` writes into a fresh temp sibling; the
    marker is added last, so only complete folders carry it. Nothing is deleted before the swap.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    check_replaceable(dest, what)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        result = fill(tmp)
        atomic_write_json(tmp / OUTPUT_MARKER, {"created_by": "pokegan", "what": what})
        fsync_dir(tmp)
        check_replaceable(dest, what)  # again: something may have appeared while fill ran
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{os.getpid()}-", dir=dest.parent))
            os.replace(dest, old)  # an empty dir is replaced by a rename onto it
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None and not dest.exists():
                os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8}


def check_safetensors_fit(weights: Path, wanted: dict[str, tuple[int, ...]], config_name: str, fix: str,
                          error: type[Exception] = ValueError) -> None:
    """The safetensors header of ``weights`` (names, dtypes, shapes, offsets, file size) against
    the tensors a network needs (``wanted``: name -> shape), read before anything is allocated:
    a config edited to ask for a bigger network than its weights, or weights that claim more bytes
    than the file holds, fail here with ``error`` naming ``fix`` instead of exhausting memory."""
    import math

    weights = Path(weights)
    size = weights.stat().st_size
    with weights.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise error(f"{weights} is corrupt or not safetensors (bad header length); {fix}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise error(f"{weights} has a corrupt safetensors header ({exc}); {fix}") from exc
    if not isinstance(header, dict):
        raise error(f"{weights} has a corrupt safetensors header; {fix}")
    header.pop("__metadata__", None)
    if set(header) != set(wanted):
        extra, missing = sorted(set(header) - set(wanted)), sorted(set(wanted) - set(header))
        raise error(
            f"{weights} does not match its {config_name}: {len(missing)} tensors missing {missing[:3]}, "
            f"{len(extra)} unexpected {extra[:3]}; {fix} (never edit {config_name} by hand)")
    end = 0
    for k, shape in wanted.items():
        entry = header[k]
        got = tuple(entry.get("shape", ())) if isinstance(entry, dict) else None
        if got != shape:
            raise error(f"{weights}: {k} has shape {got}, its {config_name} needs {shape}; {fix} "
                             f"(never edit {config_name} by hand)")
        width = _DTYPE_BYTES.get(entry.get("dtype"))
        lo, hi = (entry.get("data_offsets") or [0, -1])[:2]
        if width is None or hi - lo != width * math.prod(shape):
            raise error(f"{weights}: {k} has dtype {entry.get('dtype')} and offsets {lo}..{hi}, which do "
                             f"not hold shape {shape}; {fix}")
        end = max(end, hi)
    if 8 + n + end != size:
        raise error(f"{weights} is {size} bytes but its header describes {8 + n + end}; it is truncated "
                         f"or corrupt: {fix}")

