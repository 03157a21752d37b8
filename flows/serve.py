"""Serve the flows as Prefect deployments (needs a running `prefect server`, see README).

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


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cron", default=None, help='schedule for the pipeline deployment, e.g. "0 3 * * *"')
    args = parser.parse_args(argv)
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("serve: error: PREFECT_API_URL is not set; start `prefect server start` and "
              "export PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a server)", file=sys.stderr)
        return 2
    serve(*build_deployments(args.params, args.root, args.cron))
    return 0


if __name__ == "__main__":
    sys.exit(main())
