"""The whole chain as one Prefect flow: fetch -> prepare -> pokedex -> train -> evaluate -> sample.

Each step is the flow the DVC stage of the same name runs, called as a subflow from a cached
task, so a deployment of this flow does what `dvc repro` does, and DVC alone decides what is
stale: one in-process `dvc status` of the six stages per run (asked again, for the later
stages only, after a step ran and so changed their deps). A stage DVC reports changed (params,
deps or outs against dvc.lock, or not in it yet) runs, and is then committed as `dvc repro`
commits it (dvc.lock updated, outs in the DVC cache); an up-to-date one is found in Prefect's
task cache ("Cached" in the UI) and does no work. The cache key is the stage's DVC run-cache
key (the hash of what dvc.lock records of its cmd, deps and params); results persist under
``.prefect/results``. ``-S`` overrides (or a ``--params`` file other than params.yaml) are what
DVC reads as the stages' params, as with `dvc exp run -S`, so dvc.lock records what ran.

    python -m flows.pipeline --params params.yaml [-S train.max_resolution=16] [--force]
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import base_parser, load_run_params, resolve
from stylegan.config import section, set_overrides

STEPS = ("fetch", "prepare", "pokedex", "train", "evaluate", "sample")
RESULTS_DIR = ".prefect/results"  # persisted step results: the cache that lets a rerun skip work
DEFAULT_PARAMS = "params.yaml"  # the params file dvc.yaml's stages read


class DvcStages:
    """DVC's view of the pipeline's stages (its Python API, in process): what is stale, each
    stage's run-cache key, and the commit of a finished step to dvc.lock.

    When the run's params differ from what DVC would read (``overrides``, or ``params_path`` not
    params.yaml), DVC reads them from a copy of ``params_path`` with the overrides applied, as
    `dvc exp run -S` would write params.yaml; dvc.lock then records the values a step ran with.
    """

    def __init__(self, root: str | Path, params_path: str = DEFAULT_PARAMS, overrides: Iterable[str] = ()) -> None:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        self.root = Path(root).resolve()
        try:
            self.repo = Repo(str(self.root))
        except NotDvcRepoError:
            raise FileNotFoundError(f"{self.root} is not a DVC project; flows.pipeline asks DVC what is stale, so "
                                    "run it in a pokegan project root (--root) or `dvc init` there first") from None
        self._tmp: Path | None = None
        self._params: str | None = None  # the effective params file DVC reads instead of params.yaml
        source, overrides = resolve(self.root, params_path).resolve(), list(overrides)
        if source != self.root / DEFAULT_PARAMS or overrides:
            from dvc.utils.serialize import MODIFIERS

            self._tmp = Path(tempfile.mkdtemp(prefix="pokegan-pipeline-params-"))
            effective = self._tmp / f"params{source.suffix}"  # DVC picks its loader by the suffix
            shutil.copyfile(source, effective)
            with MODIFIERS[source.suffix.lower()](str(effective)) as data:  # round trip: other values as read
                set_overrides(data, overrides)
            self._params = str(effective)

    def close(self) -> None:
        self.repo.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @contextmanager
    def _session(self) -> Iterator[None]:
        """The repo lock, from the project root: DVC's stage code reads paths relative to the
        working directory, as its CLI runs there."""
        from dvc.repo import lock_repo

        with chdir(self.root), lock_repo(self.repo):
            yield

    def _stage(self, name: str) -> Any:
        """The stage as dvc.yaml and dvc.lock declare it now, reading the run's params."""
        from dvc.dependency.param import ParamsDependency

        stage = self.repo.stage.load_one(name=name)
        default = str(self.root / DEFAULT_PARAMS)
        for dep in stage.deps:
            if self._params and isinstance(dep, ParamsDependency) and dep.fs_path == default:
                dep.fs_path = self._params
        return stage

    def status(self, stages: Iterable[str]) -> dict[str, list[Any]]:
        """`dvc status <stages>`: the stale ones, each with what changed (as ``dvc status --json``)."""
        changed: dict[str, list[Any]] = {}
        with self._session():
            for name in stages:  # what Repo.status does for each target
                changed.update(self._stage(name).status(check_updates=True))
        if self._params:  # the params file by the name dvc.yaml gives it, not the effective copy's
            for entries in changed.values():
                for entry in entries:
                    if isinstance(entry, dict) and self._params in entry.get("changed deps", {}):
                        deps = entry["changed deps"]
                        deps[DEFAULT_PARAMS] = deps.pop(self._params)
        return changed

    def key(self, name: str) -> str:
        """The stage's DVC run-cache key now: its dvc.lock entry (cmd, deps' hashes, params' values)
        for the workspace, outs by path only (``dvc.stage.cache``); what dvc.lock holds once it ran."""
        from dvc.stage.serialize import to_single_stage_lockfile
        from dvc.utils import dict_sha256
        from dvc_data.hashfile.meta import Meta

        with self._session():
            stage = self._stage(name)
            stage.save_deps(allow_missing=True)
            entry = to_single_stage_lockfile(stage)
        entry["outs"] = [out["path"] for out in entry.get("outs", [])]
        return dict_sha256(entry, exclude=[Meta.PARAM_SIZE, Meta.PARAM_NFILES])

    def commit(self, name: str) -> None:
        """Record a finished step in dvc.lock as `dvc repro` does after running the stage."""
        with self._session():
            stage = self._stage(name)
            uncached = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
            stage.save(run_cache=not uncached)
            stage.commit()
            stage.dump(update_pipeline=False)


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return f"pokegan-{parameters['stage']}-dvc-{parameters['dvc_key']}"


def _step_flow(stage: str) -> Callable[..., Any]:
    if stage == "fetch":
        return _fetch_flow
    module = __import__(f"flows.{stage}", fromlist=[f"{stage}_flow"])
    return getattr(module, f"{stage}_flow")


@flow(name="pokegan-fetch", log_prints=True)
def _fetch_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".") -> str:
    """Fetch the npm sprite package (integrity-checked), or record a local source, and the species
    names (flows.fetch)."""
    from flows.fetch import fetch_all

    params = load_run_params(Path(root) / params_path, overrides or [])
    path, names = fetch_all(params, root)
    get_run_logger().info("fetched %s -> %s; names -> %s", section(params, "data").source, path, names)
    return str(path)


@task(name="step", task_run_name="{stage}", cache_key_fn=_cache_key, persist_result=True,
      retries=0)
def run_step(stage: str, params_path: str, overrides: list[str], root: str, dvc_key: str) -> dict[str, Any]:
    """Run one step (its flow, as a subflow); cached under ``dvc_key``, the stage's DVC run-cache key."""
    return {"result": _step_flow(stage)(params_path=params_path, overrides=overrides, root=root)}


def _describe(changes: list[Any], limit: int = 4) -> str:
    """DVC's status entries of one stage in a line: "changed deps: data/raw; changed outs: samples"."""
    parts = []
    for change in changes:
        if not isinstance(change, dict):
            parts.append(str(change))  # "changed command", "always changed"
            continue
        for kind, entries in change.items():
            names = sorted(map(str, entries))
            more = f", +{len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{kind}: {', '.join(names[:limit])}{more}")
    return "; ".join(parts)


@flow(name="pokegan-pipeline", log_prints=True)
def pipeline_flow(params_path: str = DEFAULT_PARAMS, overrides: list[str] | None = None, root: str = ".",
                  skip_prepare: bool = False, force: bool = False) -> dict[str, Any]:
    """Fetch, prepare, the Pokédex, train (stage by stage), evaluate + champion rule, sample from the registry.

    DVC decides what is stale (``dvc status``); stale steps run and are committed to dvc.lock,
    the others are skipped (cached); ``force`` runs every step; ``skip_prepare`` reuses
    data/prepared as it is (no check that it is current).
    """
    from prefect.filesystems import LocalFileSystem

    logger = get_run_logger()
    overrides = list(overrides or [])
    root_p = str(Path(root).resolve())
    dvc = DvcStages(root_p, params_path, overrides)
    try:
        # A saved block (Prefect wants result storage known to the server), one per project folder.
        storage = LocalFileSystem(basepath=str(Path(root_p) / RESULTS_DIR))
        storage.save(f"pokegan-results-{hashlib.sha256(root_p.encode()).hexdigest()[:12]}", overwrite=True)
        data_dir = resolve(root_p, section(load_run_params(Path(root_p) / params_path, overrides), "data").out_dir)
        stale = dvc.status(STEPS)  # one `dvc status` per run, asked again only after a step ran
        logger.info("dvc status: %s", ", ".join(stale) + " changed" if stale else "every stage up to date")
        first_stale = dict(stale)
        results: dict[str, Any] = {}
        steps: dict[str, str] = {}
        for i, stage in enumerate(STEPS):
            if stage == "prepare" and skip_prepare and (data_dir / "manifest.csv").exists():
                logger.info("skip_prepare: using the prepared data in %s", data_dir)
                steps[stage] = "skipped"
                continue
            must_run = force or stage in stale
            if stage in stale:
                logger.info("%s: DVC reports it changed (%s); running it", stage, _describe(stale[stage]))
            step = run_step.with_options(name=stage, result_storage=storage, refresh_cache=must_run or None)
            state = step(stage, params_path, overrides, root_p, dvc.key(stage), return_state=True)
            record = state.result()
            results[stage] = record["result"]
            if state.name == "Cached":
                steps[stage] = "cached"
                logger.info("%s: up to date in dvc.lock; skipped", stage)
                continue
            if not must_run:
                logger.info("%s: up to date in dvc.lock but no result of it in %s, so it ran", stage, RESULTS_DIR)
            steps[stage] = "ran"
            dvc.commit(stage)
            stale = dvc.status(STEPS[i + 1:])  # its outputs are the next stages' deps
    finally:
        dvc.close()
    return {"pokedex": results.get("pokedex"), "registered": results.get("train"),
            "evaluation": results.get("evaluate"), "samples": results.get("sample"), "steps": steps,
            "stale": first_stale}


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
