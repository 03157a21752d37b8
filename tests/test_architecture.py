"""The library/orchestration boundary, read from the source with ``ast`` (nothing here imports the project).

The import graph of stylegan/ and flows/ counts every ``import`` / ``from ... import``: at module
level, inside functions (lazy) and under ``if TYPE_CHECKING:``, plus ``importlib.import_module`` of a
literal. On it:

- no cycles among project modules (a lazy import is still an edge: it only hides the cycle);
- stylegan/ reaches orchestration (flows, prefect, mlflow, dvc) only from the CLI composition root;
- no module imports another module's private (``_x``) name: shared names get a public home.

``stylegan.data`` resolves its names with ``importlib.import_module(<variable>)``; such dynamic
imports are invisible here (as they are to any static check).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("stylegan", "flows")
# Orchestration the library must not import (dvc_data / dvc_objects are DVC's own libraries).
ORCHESTRATION = {"flows", "prefect", "mlflow", "dvc", "dvc_data", "dvc_objects"}
# The composition root's hooks (the CLI package's model loading and studio registry): the only
# stylegan modules allowed to import orchestration (lazily).
ORCHESTRATION_ALLOWED = {"stylegan.cli.models"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str  # a project module, or the top-level name of a third-party one
    kind: str  # "top", "lazy" (inside a function) or "typing" (under TYPE_CHECKING)
    line: int
    names: tuple[str, ...] = ()  # the names of a ``from dst import ...``

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.kind}, line {self.line})"


@dataclass
class Graph:
    modules: set[str]
    edges: list[Edge]  # to project modules
    external: list[Edge]  # to anything else (dst = its top-level name)
    private: list[str]  # private-name uses across project modules, one line each


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, kind: str = "top") -> Iterator[tuple[ast.AST, str]]:
    """Every node with how an import there runs: at import time, lazily, or only for type checkers."""
    for child in ast.iter_child_nodes(node):
        child_kind = kind
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "top":
            child_kind = "lazy"
        yield child, child_kind
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, "typing"
                yield from _walk(stmt, "typing")
            for stmt in child.orelse:
                yield stmt, child_kind
                yield from _walk(stmt, child_kind)
        else:
            yield from _walk(child, child_kind)


def build_graph(sources: Mapping[str, tuple[str, bool]]) -> Graph:
    """The graph of ``{module: (source text, is a package)}``."""
    modules = set(sources)
    edges: list[Edge] = []
    external: list[Edge] = []
    private: list[str] = []

    def resolve(name: str) -> str | None:
        """The project module ``name`` names (its nearest existing parent); None if not the project's."""
        if name.split(".")[0] not in ROOTS:
            return None
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, (text, is_pkg) in sorted(sources.items()):
        tree = ast.parse(text, filename=mod)
        bound: dict[str, str] = {}  # local name -> the project module it is bound to

        def add(dst_name: str, kind: str, line: int, names: tuple[str, ...] = (), mod: str = mod) -> None:
            dst = resolve(dst_name)
            if dst is None:
                external.append(Edge(mod, dst_name.split(".")[0], kind, line, names))
            elif dst != mod:
                edges.append(Edge(mod, dst, kind, line, names))
                if any(_is_private(part) for part in dst_name.split(".")):
                    private.append(f"{mod} line {line}: imports private module {dst_name}")

        nodes = list(_walk(tree))
        for node, kind in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, kind, node.lineno)
                    if alias.asname and resolve(alias.name) == alias.name:
                        bound[alias.asname] = alias.name
                    elif not alias.asname:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in (or is)
                    package = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                names = tuple(a.name for a in node.names)
                submodules = [n for n in names if f"{base}.{n}" in modules]
                for n in submodules:  # `from stylegan import distributed`: an edge to the submodule
                    add(f"{base}.{n}", kind, node.lineno)
                rest = tuple(n for n in names if n not in submodules)
                if rest or not submodules:
                    add(base, kind, node.lineno, rest)
                target = resolve(base)
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif target is not None and target != mod and _is_private(alias.name):
                        private.append(f"{mod} line {node.lineno}: from {base} import {alias.name}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                add(node.args[0].value, kind, node.lineno)

        def module_of(expr: ast.expr, bound: dict[str, str] = bound) -> str | None:
            """The project module an expression such as ``stylegan.data.prepare`` stands for."""
            if isinstance(expr, ast.Name):
                return bound.get(expr.id) if expr.id in bound and bound[expr.id] in modules | set(ROOTS) else None
            if isinstance(expr, ast.Attribute):
                parent = module_of(expr.value)
                if parent is not None and f"{parent}.{expr.attr}" in modules:
                    return f"{parent}.{expr.attr}"
            return None

        for node, _kind in nodes:  # `module._name` and getattr(module, "_name") on a project module
            owner, attr = None, None
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner, attr = module_of(node.value), node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and _is_private(node.args[1].value)):
                owner, attr = module_of(node.args[0]), node.args[1].value
            if owner is not None and owner != mod:
                private.append(f"{mod} line {node.lineno}: uses {owner}.{attr}")
    return Graph(modules, edges, external, private)


def _project_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_pkg else parts)
            sources[name] = (path.read_text(), is_pkg)
    return sources


def find_cycles(graph: Graph, within: str | None = None) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component of more than one module."""
    adj: dict[str, list[Edge]] = {}
    for e in graph.edges:
        if within is None or (e.src.split(".")[0] == within and e.dst.split(".")[0] == within):
            adj.setdefault(e.src, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in adj.get(v, []):
            if e.dst not in index:
                strongconnect(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on_stack:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(adj):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in components:  # a shortest way back to the start, inside the component
        start = min(comp)
        paths: dict[str, list[Edge]] = {start: []}
        queue = [start]
        found: list[Edge] | None = None
        while queue and found is None:
            v = queue.pop(0)
            for e in adj.get(v, []):
                if e.dst == start:
                    found = [*paths[v], e]
                    break
                if e.dst in comp and e.dst not in paths:
                    paths[e.dst] = [*paths[v], e]
                    queue.append(e.dst)
        assert found is not None
        cycles.append(found)
    return cycles


def boundary_violations(graph: Graph) -> list[Edge]:
    """Imports of orchestration from a stylegan module other than the composition root."""
    return [e for e in graph.edges + graph.external
            if e.src.split(".")[0] == "stylegan" and e.src not in ORCHESTRATION_ALLOWED
            and e.dst.split(".")[0] in ORCHESTRATION]


def _describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].src] + [f"{e.dst} [{e.kind}, {e.src} line {e.line}]" for e in cycle])


# ---------------------------------------------------------------------------------------------
# The checks on the project


def test_no_import_cycles() -> None:
    cycles = find_cycles(build_graph(_project_sources()))
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c) for c in cycles)


def test_library_imports_orchestration_only_from_the_cli() -> None:
    bad = boundary_violations(build_graph(_project_sources()))
    assert not bad, (f"stylegan modules other than {sorted(ORCHESTRATION_ALLOWED)} import orchestration "
                     "(compose it in the CLI, or take it as an argument):\n" + "\n".join(map(str, bad)))


def test_no_private_names_across_modules() -> None:
    private = build_graph(_project_sources()).private
    assert not private, "private names used across modules (give them a public home):\n" + "\n".join(private)


def test_graph_is_plausible() -> None:
    """The parse saw the project: enough modules and edges, and edges that are known to exist."""
    graph = build_graph(_project_sources())
    assert len(graph.modules) >= 40, sorted(graph.modules)
    assert len(graph.edges) >= 150, len(graph.edges)
    kinds = {(e.src, e.dst): e.kind for e in graph.edges}
    assert kinds[("stylegan.training.trainer", "stylegan.training.networks")] == "top"
    assert kinds[("stylegan.cli.models", "flows.sample")] == "lazy"  # the allowed registry hook
    assert kinds[("stylegan.cli.models", "flows.studio_registry")] == "lazy"
    assert kinds[("stylegan.cli.train", "stylegan.config")] in {"typing", "lazy"}
    assert kinds[("stylegan.cli", "stylegan.cli.sample")] == "top"  # the parser assembly
    assert kinds[("flows.train", "stylegan.training")] == "lazy"
    assert {"top", "lazy", "typing"} <= {e.kind for e in graph.edges}
    assert any(e.dst == "mlflow" for e in graph.external)
    assert graph.modules >= ORCHESTRATION_ALLOWED  # the allow-list names modules that exist


# ---------------------------------------------------------------------------------------------
# The detectors themselves, on small synthetic projects (so the checks above cannot pass vacuously)

_SYNTHETIC = {
    "stylegan": ("", True),
    "stylegan.a": ("from stylegan import b\nfrom stylegan.c import helper\n", False),
    "stylegan.b": ("def f():\n    from stylegan.c import helper\n    return helper\n", False),
    "stylegan.c": ("def helper():\n    import stylegan.a\n    return stylegan.a\n", False),
    "stylegan.d": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stylegan.a import x\n", False),
    "stylegan.cli.models": ("def run():\n    from flows.x import go\n    import mlflow\n", False),
    "stylegan.lib": ("def run():\n    import prefect\n    from flows import x\n    from dvc.fs import F\n", False),
    "stylegan.priv": ("from stylegan.c import _hidden, __all__\nfrom stylegan import c\nc._secret\n"
                      "import stylegan.a\nstylegan.a._inner()\ngetattr(c, '_g')\nfrom . import _mod\n", False),
    "stylegan._mod": ("", False),
    "stylegan.fine": ("def _own():\n    pass\n_own()\nimport os\nos._exit\n", False),
    "flows": ("", True),
    "flows.x": ("import importlib\nimportlib.import_module('stylegan.a')\ndef go():\n    pass\n", False),
}


def test_detector_finds_a_cycle_through_lazy_imports() -> None:
    graph = build_graph(_SYNTHETIC)
    kinds = {(e.src, e.dst): e.kind for e in graph.edges}
    assert kinds[("stylegan.a", "stylegan.b")] == "top" and kinds[("stylegan.b", "stylegan.c")] == "lazy"
    assert kinds[("stylegan.d", "stylegan.a")] == "typing"
    assert kinds[("flows.x", "stylegan.a")] == "top"  # importlib.import_module of a literal
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    assert {e.src for e in cycles[0]} == {"stylegan.a", "stylegan.c"}  # the shortest: a -> c -> a
    assert "stylegan.c [top" in _describe(cycles[0]) and "stylegan.a [lazy" in _describe(cycles[0])
    assert not find_cycles(build_graph({k: v for k, v in _SYNTHETIC.items() if k != "stylegan.c"}))


def test_detector_finds_orchestration_outside_the_cli() -> None:
    bad = {(e.src, e.dst) for e in boundary_violations(build_graph(_SYNTHETIC))}
    assert bad == {("stylegan.lib", "prefect"), ("stylegan.lib", "flows.x"), ("stylegan.lib", "dvc")}


def test_detector_finds_private_names() -> None:
    private = build_graph(_SYNTHETIC).private
    assert len(private) == 5, private
    text = "\n".join(private)
    for needle in ("import _hidden", "stylegan.c._secret", "stylegan.a._inner", "stylegan.c._g", "stylegan._mod"):
        assert needle in text, needle
    assert "stylegan.fine" not in text and "__all__" not in text  # its own privates, a stdlib one, dunders


def test_telemetry_switches_have_one_home() -> None:
    """flows/telemetry.env is the one list: the scripts source it, Python reads it, no copy."""
    from flows import TELEMETRY_FILE, telemetry_env

    root = TELEMETRY_FILE.parents[1]
    wanted = {"PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "DO_NOT_TRACK"}
    assert wanted <= set(telemetry_env())
    for script in ("scripts/main.sh", "scripts/test.sh", "scripts/team-services.sh"):
        assert "flows/telemetry.env; set +a" in (root / script).read_text(), script
    copies = [p for p in [*root.glob("*/*.py"), *root.glob("*/*/*.py"), *root.glob("*/*.sh")]
              if ".venv" not in p.parts and p != Path(__file__) and p != TELEMETRY_FILE
              and "DVC_NO_ANALYTICS" in p.read_text()]
    assert not copies, f"telemetry variables spelled out outside {TELEMETRY_FILE.name}: {copies}"


def _test_module_imports(source: str) -> list[str]:
    """Every import in ``source`` (at any depth) of a test module: ``tests.test_*`` or ``tests.faults.test_*``,
    as ``import tests.test_x``, ``from tests.test_x import y`` or ``from tests import test_x``."""

    def is_test_module(name: str) -> bool:
        parts = name.split(".")
        return (len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")) or (
            len(parts) >= 3 and parts[:2] == ["tests", "faults"] and parts[2].startswith("test_"))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if is_test_module(node.module):
                found.append(f"from {node.module} import ...")
            else:
                found += [f"from {node.module} import {a.name}" for a in node.names
                          if is_test_module(f"{node.module}.{a.name}")]
    return found


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in helpers modules (tests/helpers.py, tests/flows_helpers.py, tests/faults/_faultlib.py,
    conftest.py), never in a test module another one imports: each test file runs, and reads, on its own."""
    probe = ("import tests.test_a\nfrom tests.test_b import x\nfrom tests import test_c, helpers\n"
             "from tests.faults import test_d, _faultlib\ndef f():\n    from tests.faults.test_e import y\n"
             "from tests.helpers import tiny_model_config\nfrom tests.flows_helpers import tiny_params\n")
    assert _test_module_imports(probe) == [
        "import tests.test_a", "from tests.test_b import ...", "from tests import test_c",
        "from tests.faults import test_d", "from tests.faults.test_e import ...",
    ]
    files = sorted([*(REPO / "tests").glob("*.py"), *(REPO / "tests" / "faults").glob("*.py")])
    assert len(files) > 40
    offenders = {str(p.relative_to(REPO)): found for p in files if (found := _test_module_imports(p.read_text()))}
    assert not offenders, f"test modules importing test modules (move the shared code to tests/helpers.py): {offenders}"
