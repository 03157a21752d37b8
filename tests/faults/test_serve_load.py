"""The served model under load: `mlflow models serve` on 127.0.0.1, 8 concurrent requests, one oversized.

The oversized request (100,000 rows) gets a 400 naming the bound (``MAX_ROWS``) before anything is
generated; the other seven succeed; the server's resident memory (the process and its workers,
from /proc) stays within a bound while they run. Prints one ``FIGURE`` line (docs/benchmarks.md, "Fault injection").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flows import telemetry_env
from tests.faults import _faultlib as fl
from tests.helpers import free_port, stop_group

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]

CONCURRENT = 8
ROWS = 64  # rows of each normal request (MAX_ROWS is 256)
OVERSIZED = 100_000
RSS_BOUND = 512 << 20  # growth of the server's memory over its idle size during the load


def _post(url: str, rows: int, timeout: float = 120.0) -> tuple[int, dict[str, Any], float]:
    body = json.dumps({"dataframe_split": {"columns": ["seed"], "data": [[i] for i in range(rows)]}}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), time.perf_counter() - t0


@pytest.fixture
def server(tmp_path: Path) -> Any:
    pytest.importorskip("mlflow")
    import mlflow
    import torch

    import stylegan
    from flows.tracking import logged_model
    from stylegan.checkpoint import export_generator
    from stylegan.config import section
    from stylegan.training.networks import Generator
    from tests.flows_helpers import tiny_params

    torch.manual_seed(0)  # an untrained 16x16 generator serves as well as a trained one here
    export_generator(Generator(section(tiny_params(), "model")), tmp_path / "export", 16)
    model = tmp_path / "model"
    mlflow.pyfunc.save_model(  # the model the train flow logs (logged_model.log_generator_model), saved locally
        str(model), python_model=str(logged_model.PYFUNC_CODE), artifacts={"generator": str(tmp_path / "export")},
        code_paths=[str(Path(stylegan.__file__).parent)], signature=logged_model.model_signature(),
        pip_requirements=logged_model.PIP_REQUIREMENTS)  # no input example: its validation loads the model (seconds)
    port = free_port()
    bindir = Path(sys.executable).parent  # mlflow serve starts uvicorn from PATH
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           **telemetry_env()}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([str(bindir / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}/invocations", "pid": proc.pid}
    finally:
        stop_group(proc, grace=20)
        log.close()


def test_served_model_under_load_rejects_oversized_and_stays_bounded(server: dict[str, Any]) -> None:
    url, pid = server["url"], server["pid"]
    status, body, _ = _post(url, 2)  # warm up: the model is loaded, first-call costs paid
    assert status == 200 and len(body["predictions"]) == 2
    idle = fl.rss_bytes(pid)
    peak, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(fl.rss_bytes(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sizes = [ROWS] * (CONCURRENT - 1)
    sizes.insert(CONCURRENT // 2, OVERSIZED)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(lambda n: (n, *_post(url, n)), sizes))
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    big = next(r for r in results if r[0] == OVERSIZED)
    ok = [r for r in results if r[0] == ROWS]
    assert big[1] == 400, big[:2]
    assert f"request has {OVERSIZED:,} rows; at most 256 images per request" in big[2].get("message", ""), big[2]
    assert all(status == 200 and len(body["predictions"]) == ROWS for _, status, body, _ in ok), [r[:2] for r in ok]
    growth = max(peak) - idle
    lat = sorted(r[3] for r in ok)
    reason = big[2]["message"].split("Error:")[-1].strip()
    print(f"\nFIGURE serve-load: {CONCURRENT} concurrent requests ({CONCURRENT - 1} x {ROWS} rows + 1 x {OVERSIZED:,}) "
          f"in {wall:.1f} s: oversized -> 400 in {big[3]:.2f} s ('{reason[:70]}...'), "
          f"{len(ok)}/{len(ok)} others 200 (latency median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s); "
          f"server RSS idle {idle / 2**20:.0f} MiB, peak {max(peak) / 2**20:.0f} MiB (+{growth / 2**20:.0f} MiB)")
    assert growth < RSS_BOUND, f"server memory grew by {growth / 2**20:.0f} MiB under load"
