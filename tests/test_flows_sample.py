"""Sampling from the registry: the pyfunc model, load_registered_generator, the sample flow, a deployment."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from flows.tracking import logged_model, registry, store
from tests.flows_helpers import tiny_params, write_params

pytestmark = pytest.mark.pipeline


@pytest.fixture
def registered(tmp_path: Path, mlflow_store: str) -> dict[str, str]:
    """An (untrained) tiny generator exported, logged as the pyfunc model and registered as v1 candidate."""
    import torch

    from stylegan.checkpoint import export_generator
    from stylegan.config import section
    from stylegan.training.networks import Generator

    params = tiny_params()
    torch.manual_seed(0)
    G = Generator(section(params, "model"))
    export_generator(G, tmp_path / "export", 16)
    client = store.setup(tmp_path)
    run = client.create_run(store.ensure_experiment(client, store.EXPERIMENT, tmp_path))
    info = logged_model.log_generator_model(run.info.run_id, tmp_path / "export")
    version = registry.register(client, info.model_uri, "pokemon-stylegan", "candidate", run.info.run_id)
    write_params(tmp_path / "params.yaml", params)
    return {"version": version, "uri": info.model_uri}


def test_pyfunc_predicts_pngs_or_arrays(registered: dict[str, str]) -> None:
    import base64
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from PIL import Image

    model = mlflow.pyfunc.load_model("models:/pokemon-stylegan@candidate")
    sig = model.metadata.signature
    assert [c.name for c in sig.inputs.inputs] == ["seed", "truncation_psi", "truncation_cutoff", "noise_mode"]
    out = model.predict(pd.DataFrame({"seed": [0, 1], "truncation_psi": [0.7, 1.0], "noise_mode": ["const", "const"]}))
    assert list(out.columns) == ["seed", "image_png_base64"] and list(out["seed"]) == [0, 1]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["image_png_base64"][0]))))
    assert img.shape == (16, 16, 3)
    arr = model.predict(pd.DataFrame({"seed": [1, 0]}), params={"output": "array"})
    assert arr.shape == (2, 16, 16, 3) and arr.dtype == np.uint8
    # Per-row psi and the default psi (0.7) agree with the library's generate for the same seeds.
    # Compared batch for batch: the CPU kernels' rounding may depend on the batch size (on an
    # AVX-512/AMX machine a seed alone and the same seed in a batch of 2 differed by 1 in one pixel).
    from stylegan.sampling import generate

    G = model.unwrap_python_model().G
    np.testing.assert_array_equal(arr, generate(G, seeds=[1, 0], truncation_psi=0.7))
    # truncation_cutoff: default 8 (all 6 style layers of this 16x16 model); 2 truncates only the first two.
    cut = model.predict(pd.DataFrame({"seed": [1, 1], "truncation_psi": [0.0, 0.0], "truncation_cutoff": [2, 8]}),
                        params={"output": "array"})
    np.testing.assert_array_equal(cut[0], generate(G, seeds=[1, 1], truncation_psi=0.0, truncation_cutoff=2)[0])
    np.testing.assert_array_equal(cut[1], generate(G, seeds=[1, 1], truncation_psi=0.0)[1])
    assert not np.array_equal(cut[0], cut[1])
    with pytest.raises(Exception, match="truncation_cutoff must be >= 0"):
        model.predict(pd.DataFrame({"seed": [0], "truncation_cutoff": [-1]}))
    with pytest.raises(Exception, match="noise_mode must be one of"):
        model.predict(pd.DataFrame({"seed": [0], "noise_mode": ["loud"]}))
    with pytest.raises(Exception, match=r"truncation_psi must be in \[0, 1\]"):
        model.predict(pd.DataFrame({"seed": [0, 1], "truncation_psi": [0.5, 3.0]}))


def test_pyfunc_names_images_with_a_logged_pokedex(tmp_path: Path, mlflow_store: str) -> None:
    """Logged with a Pokédex (a second artifact), the model adds name + looks_like (JSON) to each row."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from stylegan.checkpoint import export_generator
    from stylegan.config import section
    from stylegan.pokedex import PokedexError, load_pokedex
    from stylegan.pokedex.explain import explain
    from stylegan.training.networks import Generator
    from tests.helpers import POKEDEX_NAMES, write_tiny_pokedex

    torch.manual_seed(0)
    export_generator(Generator(section(tiny_params(), "model")), tmp_path / "export", 16)
    dex = write_tiny_pokedex(tmp_path / "pokedex")
    client = store.setup(tmp_path)
    run = client.create_run(store.ensure_experiment(client, store.EXPERIMENT, tmp_path))
    with pytest.raises(PokedexError, match="no Pokédex"):  # refused before anything is logged
        logged_model.log_generator_model(run.info.run_id, tmp_path / "export", pokedex_dir=tmp_path / "missing")
    info = logged_model.log_generator_model(run.info.run_id, tmp_path / "export", pokedex_dir=dex)
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert [c.name for c in model.metadata.signature.outputs.inputs] == ["seed", "image_png_base64", "name",
                                                                          "looks_like"]
    out = model.predict(pd.DataFrame({"seed": [0, 1]}))
    assert list(out.columns) == ["seed", "image_png_base64", "name", "looks_like"]
    arr = model.predict(pd.DataFrame({"seed": [0, 1]}), params={"output": "array"})
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 16, 16, 3)  # the array output is unchanged
    want = explain(load_pokedex(dex), arr)
    assert list(out["name"]) == [e.name for e in want]
    looks = json.loads(out["looks_like"][0])
    assert looks == want[0].to_dict()["looks_like"] and len(looks) == 3
    assert {m["name"] for m in looks} <= set(POKEDEX_NAMES) and set(looks[0]) == {"name", "species_id", "prob"}


def test_load_registered_generator_and_errors(registered: dict[str, str], tmp_path: Path) -> None:
    from flows.sample import load_registered_generator

    G = load_registered_generator("models:/pokemon-stylegan@candidate", root=tmp_path)
    assert G.img_resolution == 16 and G.registry_version == "1"
    assert load_registered_generator("models:/pokemon-stylegan/1", root=tmp_path).registry_version == "1"
    with pytest.raises(registry.RegistryError, match=r"has no alias 'champion'; aliases: candidate -> v1"):
        load_registered_generator("models:/pokemon-stylegan@champion", root=tmp_path)
    with pytest.raises(registry.RegistryError, match=r"no registered model 'other'.*pokemon-stylegan"):
        load_registered_generator("models:/other@champion", root=tmp_path)


@pytest.mark.slow  # end to end (torchrun / a served deployment / a whole recipe): not in the quick loop
def test_sample_flow_served_as_a_deployment(registered: dict[str, str], tmp_path: Path, prefect_harness: None) -> None:
    """The sample deployment served by a Runner (what `python -m flows.serve` does) runs a triggered flow run."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from flows.serve import build_deployments

    deployments = {d.name: d for d in build_deployments("params.yaml", str(tmp_path))}
    assert set(deployments) == {"pipeline", "prepare", "train", "evaluate", "sample"}
    runner = Runner(query_seconds=1)
    runner.add_deployment(deployments["sample"])  # registers it with the server
    flow_run = run_deployment(  # what `prefect deployment run pokegan-sample/sample -p ...` does
        "pokegan-sample/sample", timeout=0,
        parameters={"model_uri": "models:/pokemon-stylegan@candidate", "overrides": ["sample.seeds=0-2"]},
    )
    asyncio.run(runner.start(run_once=True))  # picks up the scheduled run, executes it, stops
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_completed(), state
    assert sorted(p.name for p in (tmp_path / "samples").glob("seed*.png")) == [
        "seed0000.png", "seed0001.png", "seed0002.png"]
    assert json.loads((tmp_path / "samples" / "sample.json").read_text())["version"] == "1"
