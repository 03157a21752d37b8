"""The studio over a real MLflow registry (SQLite store): versions, metrics, promotion reasons, switching."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from PIL import Image

from flows import studio_registry
from flows.tracking import logged_model, registry, store

pytestmark = pytest.mark.pipeline


@pytest.mark.slow
def test_studio_lists_and_switches_registered_versions(tmp_path: Path, mlflow_store: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from stylegan.checkpoint import export_generator, load_generator
    from stylegan.cli import main
    from stylegan.sampling import generate
    from stylegan.studio import ModelSource, create_app
    from stylegan.training.networks import Generator
    from tests.helpers import tiny_model_config

    client = store.setup(tmp_path)
    exp = store.ensure_experiment(client, store.EXPERIMENT, tmp_path)
    for v, seed in (("1", 0), ("2", 1)):
        torch.manual_seed(seed)
        G = Generator(tiny_model_config(max_resolution=8))
        export_generator(G.eval(), tmp_path / f"export{v}")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "eval.swd", 10.0 * int(v))
        info = logged_model.log_generator_model(run.info.run_id, tmp_path / f"export{v}")
        assert registry.register(client, info.model_uri, "pokemon-stylegan", "candidate", run.info.run_id) == v
        client.set_model_version_tag("pokemon-stylegan", v, "eval.fd_effnet", str(50.0 - int(v)))
        client.set_model_version_tag("pokemon-stylegan", v, "promotion.decision", "promoted")
        client.set_model_version_tag("pokemon-stylegan", v, "promotion.reason", f"reason of v{v}")
    client.set_registered_model_alias("pokemon-stylegan", "champion", "2")

    source = ModelSource("models:/pokemon-stylegan@champion", registry=studio_registry)
    assert source.default_version == "2"
    app = TestClient(create_app(source, perceptual=False))
    data = app.get("/api/versions").json()
    v2, v1 = data["versions"]
    assert (v2["version"], v2["aliases"]) == ("2", ["candidate", "champion"]) and v1["aliases"] == []
    assert v2["metrics"] == {"fd_effnet": 48.0, "swd": 20.0} and v1["reason"] == "reason of v1"
    assert v2["decision"] == "promoted"

    def image(version: str) -> np.ndarray:
        url = app.post("/api/render", json={"items": [{"seed": 3}], "version": version, "psi": 1}).json()["images"][0]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))

    for v in ("1", "2"):
        np.testing.assert_array_equal(image(v), generate(load_generator(tmp_path / f"export{v}"), seeds=[3])[0])
    r = app.post("/api/render", json={"items": [{"seed": 3}], "version": "9"})
    assert r.status_code == 404 and "has no version 9" in r.json()["detail"]

    # A model that is not registered: `pokegan studio` says what exists, in one line, before serving.
    capsys.readouterr()  # MLflow's own log lines so far
    assert main(["studio", "--model", "models:/pokemon-stylegan@best"]) == 2
    err = capsys.readouterr().err
    assert "has no alias 'best'" in err and "champion -> v2" in err and len(err.strip().splitlines()) == 1
