"""Serve the flows as Prefect deployments (needs a running `prefect server`, see README).

Two ways: ``flow.serve`` in this process (below), or ``--deploy --pool NAME``: deployments on a
Prefect work pool (type process) whose flow code is this checkout, run by
``prefect worker start --pool NAME`` on any machine that has the checkout at the same path
(``scripts/team-services.sh`` starts the servers and does this).

    prefect server start                                   # terminal 1 (UI on http://127.0.0.1:4200)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                  # terminal 2: serves every deployment
    prefect deployment run pokegan-pipeline/pipeline       # terminal 3, or "Run" in the UI
    prefect deployment run pokegan-sample/sample -p overrides='["sample.seeds=0-15"]'

``--cron "0 3 * * *"`` schedules the pipeline deployment (e.g. nightly retraining).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flows.common import base_parser


def build_deployments(params_path: str = "params.yaml", root: str = ".", cron: str | None = None) -> list[Any]:
    """One deployment per flow, all reading ``params_path`` under ``root`` (absolute, so any cwd works)."""
    from flows.evaluate import evaluate_flow
    from flows.pipeline import pipeline_flow
    from flows.prepare import prepare_flow
    from flows.sample import sample_flow
    from flows.train import train_flow

    base = {"params_path": params_path, "root": str(Path(root).resolve())}
    tags = ["pokegan"]
    return [
        pipeline_flow.to_deployment(name="pipeline", parameters=base, tags=tags, cron=cron,
                                    description="fetch -> prepare -> train -> evaluate -> sample"),
        prepare_flow.to_deployment(name="prepare", parameters=base, tags=tags),
        train_flow.to_deployment(name="train", parameters=base, tags=tags),
        evaluate_flow.to_deployment(name="evaluate", parameters=base, tags=tags),
        sample_flow.to_deployment(name="sample", parameters=base, tags=tags),
    ]


# (deployment name, entrypoint, description); the flow of each is named pokegan-<name>.
ENTRYPOINTS = [
    ("pipeline", "flows/pipeline.py:pipeline_flow", "fetch -> prepare -> train -> evaluate -> sample (cached steps)"),
    ("prepare", "flows/prepare.py:prepare_flow", "validate and pack the data"),
    ("train", "flows/train.py:train_flow", "progressive training, export, register the candidate"),
    ("evaluate", "flows/evaluate.py:evaluate_flow", "metrics of the candidate, champion rule"),
    ("sample", "flows/sample.py:sample_flow", "images from the champion"),
]


def deploy_to_pool(pool: str, params_path: str = "params.yaml", root: str = ".", cron: str | None = None) -> list[str]:
    """Deploy every flow to work pool ``pool``, code from the checkout at ``root`` (no image); returns the ids."""
    from prefect import flow

    root_p = Path(root).resolve()
    ids = []
    for name, entrypoint, description in ENTRYPOINTS:
        source_flow = flow.from_source(source=str(root_p), entrypoint=entrypoint)
        ids.append(str(source_flow.deploy(
            name=name, work_pool_name=pool, parameters={"params_path": params_path, "root": str(root_p)},
            tags=["pokegan"], cron=cron if name == "pipeline" else None, description=description,
            print_next_steps=False, ignore_warnings=True,
        )))
        print(f"deployed {source_flow.name}/{name} to work pool {pool!r}")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cron", default=None, help='schedule for the pipeline deployment, e.g. "0 3 * * *"')
    parser.add_argument("--deploy", action="store_true", help="deploy to a work pool instead of serving here")
    parser.add_argument("--pool", default="pokegan", help="work pool for --deploy (type process; default pokegan)")
    args = parser.parse_args(argv)
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("serve: error: PREFECT_API_URL is not set; start `prefect server start` and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a server)", file=sys.stderr)
        return 2
    if args.deploy:
        from prefect.exceptions import ObjectNotFound

        try:
            deploy_to_pool(args.pool, args.params, args.root, args.cron)
        except ObjectNotFound:
            print(f"serve: error: work pool {args.pool!r} does not exist; create it with "
                  f"`prefect work-pool create {args.pool} --type process`", file=sys.stderr)
            return 2
        return 0
    serve(*build_deployments(args.params, args.root, args.cron))
    return 0


if __name__ == "__main__":
    sys.exit(main())
