"""Profiles: a params overlay (params-gpu.yaml) that holds only the keys that differ from params.yaml.

``dvc exp run $(pokegan profile params-gpu.yaml)`` runs the pipeline as an experiment with the
overlay applied: this prints one ``-S section.key=value`` per overlay key, spelled in Hydra's
override grammar (what ``dvc exp run -S`` parses, and what the flows' ``-S`` read the same way,
stylegan.config.parse_value). ``--write`` merges the overlay into params.yaml instead (for a plain
``dvc repro``). Either way the overlay is checked first: every key must exist in params.yaml
(a typo is an error, never a new key) and the merged config must pass every section's checks.
An overlay value replaces the key's whole value (a table such as train.batch_sizes too), as
copying a full params file used to.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from stylegan.config import SECTIONS, ConfigError, format_value, load_params, section, set_overrides


def check_overlay(base: dict[str, Any], overlay: dict[str, Any], overlay_path: str | Path = "the overlay",
                  params_path: str | Path = "params.yaml") -> None:
    """Every overlay key must be a ``section: {key: value}`` that params.yaml already has."""
    for name, keys in overlay.items():
        if name not in base:
            raise ConfigError(f"{overlay_path}: section {name!r} is not in {params_path} (sections: "
                              f"{', '.join(base)}); fix the name, or add the section to {params_path} first")
        if not isinstance(keys, dict) or not isinstance(base[name], dict):
            raise ConfigError(f"{overlay_path}: {name} must be a mapping of key: value, as in {params_path}")
        for key in keys:
            if key not in base[name]:
                # A typo must not become a new key that no stage reads (or a silent no-op).
                raise ConfigError(f"{overlay_path}: {name}.{key} is not a key of {params_path}; fix the name "
                                  f"({params_path}'s {name} keys: {', '.join(base[name])}), or add the key to "
                                  f"{params_path} first: an overlay only changes keys that exist")


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with the overlay's values in place (base untouched)."""
    merged = copy.deepcopy(base)
    for name, keys in overlay.items():
        for key, value in keys.items():
            merged[name][key] = copy.deepcopy(value)
    return merged


def validate(params: dict[str, Any]) -> None:
    """Build every typed section: the same checks the pipeline's stages make before they run."""
    for name in SECTIONS:
        if name in params:
            section(params, name)


def overrides(base: dict[str, Any], overlay: dict[str, Any]) -> list[str]:
    """``section.key=value`` assignments that turn params.yaml into the merged config under
    `dvc exp run -S` and under stylegan.config.set_override alike."""
    out = []
    for name, keys in overlay.items():
        for key, value in keys.items():
            if isinstance(value, dict):
                # dvc's Hydra merges a table into the one there (and refuses new keys even in {}):
                # null first makes the overlay's table replace it whole.
                out.append(f"{name}.{key}=null")
            out.append(f"{name}.{key}={format_value(value)}")
    return out


def load(overlay_path: str | Path, params_path: str | Path = "params.yaml") -> tuple[dict, dict, dict]:
    """(params.yaml, overlay, merged), the overlay checked and the merged config validated."""
    base = load_params(params_path)
    overlay = load_params(overlay_path)
    check_overlay(base, overlay, overlay_path, params_path)
    merged = merge(base, overlay)
    try:
        validate(merged)
    except ConfigError as exc:
        raise ConfigError(f"{overlay_path} applied to {params_path}: {exc}; fix the overlay (nothing was "
                          "written)") from None
    return base, overlay, merged


def load_params_with(overlay_path: str | Path | None, params_path: str | Path = "params.yaml",
                     overrides: Iterable[str] | None = ()) -> dict[str, Any]:
    """The params a run reads: ``params_path`` with the profile overlay merged (checked as ``load``
    checks it; None: no overlay), then ``section.key=value`` overrides in order."""
    if not overlay_path:
        return load_params(params_path, overrides)
    return set_overrides(load(overlay_path, params_path)[2], overrides)


def write(params_path: str | Path, merged: dict[str, Any], overlay_path: str | Path) -> Path:
    """Replace params.yaml by the merged config in one rename (never half a file)."""
    import yaml

    from stylegan.io import atomic_write_bytes

    text = (f"# params.yaml with {Path(overlay_path).name} applied (pokegan profile --write {overlay_path}).\n"
            "# `git checkout params.yaml` restores the default profile and its comments.\n"
            + yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, width=1 << 16))
    if yaml.safe_load(text) != merged:  # never rename into place what would not read back the same
        raise ConfigError(f"the merged config does not read back from YAML; {params_path} left as it was")
    return atomic_write_bytes(params_path, text.encode())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overlay", help="the profile: a YAML file with only the keys that differ, e.g. params-gpu.yaml")
    p.add_argument("--params", default="params.yaml", help="the params file the overlay applies to")
    p.add_argument("--write", action="store_true",
                   help="merge the overlay into --params (atomically) instead of printing -S overrides")


def run(args: argparse.Namespace) -> int:
    base, overlay, merged = load(args.overlay, args.params)
    if args.write:
        print(f"{write(args.params, merged, args.overlay)}: {sum(map(len, overlay.values()))} keys from {args.overlay}")
        return 0
    assignments = overrides(base, overlay)
    for assignment in assignments:
        if any(c.isspace() for c in assignment):
            # The output is meant for $(...), which splits words on whitespace.
            raise ConfigError(f"override {assignment!r} holds whitespace, which $(...) would split; "
                              "use --write and dvc repro for this overlay")
    print("\n".join(f"-S {a}" for a in assignments))  # all or nothing: errors come before any output
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylegan.profile", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (OSError, ConfigError) as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
