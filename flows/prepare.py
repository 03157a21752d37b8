"""Data preparation as a Prefect flow: the source split into chunks, one task per chunk.

Chunk tasks run concurrently (Prefect's thread pool) and hand the image work to the library's
supervised decode workers (``stylegan.data.workers.DecodePool``), so decoding uses every core
while each chunk stays visible as its own task. A worker that crashes or overruns
``data.decode_timeout`` costs only its file (a ``crashed_decoder`` / ``timeout`` row) and is
replaced, so a chunk task never fails or hangs on a hostile file and is not retried. Results
are written in chunk order, so the output is byte-identical for any worker count. The flow
ends with a table artifact of counts by status and reason.

    python -m flows.prepare --params params.yaml
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import base_parser, load_run_params, resolve
from stylegan.config import DataConfig, section

CHUNKS_PER_WORKER = 8  # small chunks balance files of very different sizes


@task(name="list-inputs", cache_policy=NO_CACHE)
def list_inputs_task(cfg: DataConfig, root: str) -> list[Any]:
    from stylegan.data.sources import list_inputs

    items = list_inputs(cfg, root)
    if not items:
        raise ValueError(f"data.source {cfg.source!r} holds no files; point it at a folder or zip of images")
    get_run_logger().info("%d inputs in %s", len(items), cfg.source)
    return items


@task(name="prepare-chunk", task_run_name="chunk-{index:03d}", cache_policy=NO_CACHE)
def prepare_chunk_task(index: int, items: list[Any], pool: Any) -> list[Any]:
    """Validate, crop, pad and resize one slice of the inputs in the supervised decode workers.

    No retries: a crash or a timeout is already one file's row, and anything else (the pool
    failing to start) would fail the same way again.
    """
    return pool.submit(items).result()


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"status": s, "reason": "", "count": n} for s, n in summary.get("status", {}).items()]
    rows += [{"status": "rejected/duplicate", "reason": r, "count": n} for r, n in summary.get("reasons", {}).items()]
    return rows


@flow(name="pokegan-prepare", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2))
def prepare_flow(params_path: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                 workers: int | None = None) -> dict[str, Any]:
    """Validate every input of data.source and write packed arrays, manifest.csv and summary.json."""
    from stylegan.data.prepare import write_prepared
    from stylegan.data.workers import DecodePool

    logger = get_run_logger()
    root_p = Path(root).resolve()
    params = load_run_params(root_p / params_path, overrides or [])
    cfg: DataConfig = section(params, "data")
    n_workers = (workers if workers is not None else cfg.workers) or os.cpu_count() or 1
    start = time.perf_counter()

    items = list_inputs_task(cfg, str(root_p))
    from stylegan.data.prepare import split_chunks

    chunks = split_chunks(items, max(1, n_workers * CHUNKS_PER_WORKER))
    logger.info("preparing %d inputs in %d chunk tasks on %d process(es)", len(items), len(chunks), n_workers)
    pool = DecodePool(cfg, workers=n_workers, log=logger.warning)
    try:
        pending = iter(enumerate(chunks))
        futures: deque[Any] = deque()

        def submit_next() -> None:
            nxt = next(pending, None)
            if nxt is not None:
                futures.append(prepare_chunk_task.submit(nxt[0], nxt[1], pool))

        for _ in range(2 * n_workers):  # enough in flight to keep every worker busy
            submit_next()

        def in_order() -> Iterator[list[Any]]:
            # Chunk order, whatever order they finish in. At most 2 chunks per worker are in
            # flight or waiting, and each (with its arrays) is dropped once handed to the
            # writer: submitting all at once held the whole dataset in memory (7-9 GB at 256).
            while futures:
                fut = futures.popleft()
                submit_next()
                yield fut.result()

        summary = write_prepared(in_order(), cfg, resolve(root_p, cfg.out_dir))
    finally:
        pool.close()
    seconds = time.perf_counter() - start
    logger.info("prepared %d images from %d rows in %.1f s -> %s", summary["images"], summary["rows"], seconds,
                cfg.out_dir)
    create_table_artifact(key="prepare-summary", table=_summary_rows(summary),
                          description=f"{summary['images']} images prepared from {summary['rows']} manifest rows")
    variants = "\n".join(f"| {v} | " + ", ".join(f"{s}: {n}" for s, n in sorted(c.items())) + " |"
                         for v, c in summary.get("variants", {}).items())
    create_markdown_artifact(
        key="prepare-variants",
        markdown=f"# Prepared data\n\n{summary['images']} images in {seconds:.0f} s\n\n"
                 f"| variant | counts |\n|---|---|\n{variants}\n",
        description="manifest rows per variant and status",
    )
    return {k: v for k, v in summary.items() if k != "params"}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="processes (default: data.workers; 0 = per core)")
    args = parser.parse_args(argv)
    prepare_flow(params_path=args.params, overrides=args.overrides, root=args.root, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
