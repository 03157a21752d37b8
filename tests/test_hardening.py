"""Issue 11 findings 1, 2, 7, 8, 9: nothing deleted that is not ours, bounded sampling and serving,
bounded model configs, and an export that evaluate refuses when the registration does not name it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylegan.checkpoint import CheckpointError, export_generator, load_generator
from stylegan.config import ConfigError, ModelConfig
from stylegan.training.networks import Generator
from tests.helpers import tiny_model_config


@pytest.fixture
def G() -> torch.nn.Module:
    torch.manual_seed(0)
    return Generator(tiny_model_config(fmap_base=64, max_resolution=8)).eval()


def _record_generate(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import stylegan.sampling as sampling

    sizes: list[int] = []
    real = sampling.generate

    def generate(G: Any, seeds: Any = None, **kw: Any) -> np.ndarray:
        sizes.append(len(sampling.parse_seeds(seeds)))
        return real(G, seeds=seeds, **kw)

    monkeypatch.setattr(sampling, "generate", generate)
    return sizes


# ----------------------------------------------------------------------------- 1: sample.out_dir


@pytest.mark.pipeline
def test_sample_writer_never_deletes_a_folder_it_did_not_create(G: torch.nn.Module, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prefect")
    from flows.sample import _write_samples

    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    (project / "data" / "raw" / "sprites.tgz").write_bytes(b"precious")
    (project / "params.yaml").write_text("sample: {}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    for target in (project / "data", Path("."), Path("~").expanduser(), Path("~")):
        with pytest.raises(ValueError, match="never replaced"):  # stylegan.io.OutputDirError
            _write_samples(G, [0, 1], 0.7, "const", target)
    assert (project / "data" / "raw" / "sprites.tgz").read_bytes() == b"precious"
    assert (home / ".bashrc").read_text() == "mine" and (project / "params.yaml").exists()
    # Its own output is replaced whole (a rerun with fewer seeds leaves no stale PNGs).
    _write_samples(G, [0, 1, 2], 0.7, "const", project / "samples")
    info = _write_samples(G, [5], 0.7, "const", project / "samples")
    assert sorted(p.name for p in (project / "samples").glob("*.png")) == ["grid.png", "seed0005.png"]
    assert json.loads((project / "samples" / "sample.json").read_text())["count"] == info["count"] == 1
    assert sorted(p.name for p in project.iterdir()) == ["data", "params.yaml", "samples"]


# ----------------------------------------------------------------------------- 2: bounded sampling and serving


def test_seed_lists_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import stylegan.sampling as sampling

    monkeypatch.setattr(sampling, "MAX_SEEDS", 10)
    assert sampling.parse_seeds(range(10)) == list(range(10))
    with pytest.raises(ValueError, match="over 10 seeds"):
        sampling.parse_seeds(range(11))
    with pytest.raises(ValueError, match="over 10 seeds"):
        sampling.parse_seeds(iter(range(10**12)))  # stops at the bound instead of filling memory
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        sampling.parse_seeds([-1])


def test_cli_sample_generates_and_writes_in_chunks(G: torch.nn.Module, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan.cli import main

    export_generator(G, tmp_path / "g", 8)
    sizes = _record_generate(monkeypatch)
    assert main(["sample", "--model", str(tmp_path / "g"), "--seeds", "0-79", "--out", str(tmp_path / "s"),
                 "--grid", str(tmp_path / "grid.png")]) == 0
    assert sum(sizes) == 80 and max(sizes) <= 64, sizes  # never every image at once
    assert len(list((tmp_path / "s").glob("seed*.png"))) == 80
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (9 * 8, 9 * 8)  # 80 tiles, 9 columns


@pytest.mark.pipeline
def test_served_model_bounds_rows_per_request_and_generates_in_chunks(G: torch.nn.Module,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from flows import pyfunc_model

    model = pyfunc_model.GeneratorModel()
    model.G = G
    sizes = _record_generate(monkeypatch)
    n = pyfunc_model.MAX_ROWS + 1
    with pytest.raises(MlflowException, match=rf"request has {n} rows; at most {n - 1} images per request") as exc:
        model.predict(None, pd.DataFrame({"seed": range(n)}))
    assert exc.value.get_http_status_code() == 400 and sizes == []  # refused before generating anything
    out = model.predict(None, pd.DataFrame({"seed": range(70)}), params={"output": "array"})
    assert out.shape == (70, 8, 8, 3) and max(sizes) <= pyfunc_model.CHUNK_ROWS, sizes
    from stylegan.sampling import generate

    np.testing.assert_array_equal(out[65], generate(G, seeds=[65], truncation_psi=0.7)[0])
    with pytest.raises(MlflowException, match=r"seed must be in \[0, 2\*\*32\)"):
        model.predict(None, pd.DataFrame({"seed": [2**40]}))


# ----------------------------------------------------------------------------- 7: bounded model configs


def test_model_config_has_upper_bounds() -> None:
    from stylegan.config import MODEL_LIMITS, from_dict

    from_dict(ModelConfig, {"max_resolution": 1024, "fmap_max": 512, "z_dim": 512, "w_dim": 512})  # the paper's
    for key, limit in MODEL_LIMITS.items():
        with pytest.raises(ConfigError, match=rf"model\.{key} must be <= {limit}"):
            from_dict(ModelConfig, {key: limit * 2}, "model")


def test_the_documented_model_bounds_are_model_limits() -> None:
    """docs/interfaces.md lists the bounds (the one copy outside the code; operations.md links to it)."""
    import re

    from stylegan.config import MODEL_LIMITS

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = " ".join((docs / "interfaces.md").read_text().split())
    para = text[text.index("Upper bounds of `ModelConfig`") :].split(". ", 1)[0]
    documented = {name: int(limit) for names, limit in re.findall(r"((?:`\w+`,? )+)<= (\d+)", para)
                  for name in re.findall(r"`(\w+)`", names)}
    assert documented == MODEL_LIMITS
    assert "<= 2048" not in (docs / "operations.md").read_text()  # no second copy of the numbers


def test_tampered_generator_json_fails_before_the_network_is_built(G: torch.nn.Module, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import stylegan.checkpoint as ckpt

    export_generator(G, tmp_path / "g", 8)
    info_path = tmp_path / "g" / "generator.json"
    info = json.loads(info_path.read_text())
    built: list[str] = []
    real = ckpt._generator_class

    def recording() -> Any:
        def make(cfg: Any) -> Any:
            built.append(torch.empty(()).device.type)  # where the parameters would be allocated
            return real()(cfg)

        return make

    monkeypatch.setattr(ckpt, "_generator_class", recording)
    for key, value, match in [("fmap_max", 32, r"has shape .* needs"), ("mapping_layers", 3, "tensors missing"),
                              ("z_dim", 4096, "must be <= 2048"), ("max_resolution", 1 << 16, "must be <= 1024")]:
        info_path.write_text(json.dumps({**info, "model_config": {**info["model_config"], key: value}}))
        with pytest.raises(CheckpointError, match=match):
            load_generator(tmp_path / "g")
    assert set(built) <= {"meta"}, built  # only ever sized on the meta device (no memory)
    info_path.write_text(json.dumps(info))
    weights = tmp_path / "g" / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_generator(tmp_path / "g")


# ----------------------------------------------------------------------------- 8 and 9: export and registration


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append("dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_write_json_fsyncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.common import write_json

    calls = _fsyncs(monkeypatch)
    write_json(tmp_path / "a.json", {"b": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": 1}
    assert "file" in calls and "dir" in calls, calls  # the data and the rename both reach the disk
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]



@pytest.mark.pipeline
def test_evaluate_refuses_an_export_the_registration_does_not_name(G: torch.nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("prefect")
    from flows.evaluate import ExportMismatchError, check_export_matches

    export_generator(G, tmp_path / "g", 8)
    sha = hashlib.sha256((tmp_path / "g" / "generator.safetensors").read_bytes()).hexdigest()
    record = {"name": "pokemon-stylegan", "version": "3", "generator_sha256": sha}
    assert check_export_matches(tmp_path / "g", record) == sha
    with pytest.raises(ExportMismatchError, match=r"pokemon-stylegan v3.*re-run the train stage"):
        check_export_matches(tmp_path / "g", {**record, "generator_sha256": "0" * 64})

    class Client:  # the registry says v3 holds other weights
        def get_model_version(self, name: str, version: str) -> Any:
            return type("MV", (), {"tags": {"generator.sha256": "f" * 64}})()

    with pytest.raises(ExportMismatchError, match="holds other weights"):
        check_export_matches(tmp_path / "g", record, Client())


@pytest.mark.pipeline
def test_export_swaps_and_refuses_foreign_folders(G: torch.nn.Module, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prefect")
    import os

    from flows.train import export_generator_dir
    from stylegan.io import OutputDirError

    def exporter(scale: float) -> Any:
        """What publish hands over: ``export(folder)`` writing a generator whose const is scaled."""
        def export(out: Path) -> Path:
            with torch.no_grad():
                g = Generator(G.cfg)
                g.load_state_dict(G.state_dict())
                g.synthesis.b4.const.mul_(scale)
            return export_generator(g, out, 8, {})

        return export

    out = tmp_path / "models" / "generator"
    first = export_generator_dir(exporter(1.0), out)
    real = os.replace

    def fail_swap(src: Any, dst: Any) -> None:
        if Path(str(dst)) == out and ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_swap)
    with pytest.raises(OSError):
        export_generator_dir(exporter(2.0), out)
    monkeypatch.setattr(os, "replace", real)
    assert hashlib.sha256((out / "generator.safetensors").read_bytes()).hexdigest() == first  # never deleted first
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator"]  # no temp or old folder left
    assert export_generator_dir(exporter(2.0), out) != first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    with pytest.raises(OutputDirError, match="did not create"):
        export_generator_dir(exporter(1.0), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"
