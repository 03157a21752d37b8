"""Studio API (no browser): rendering, mixing, interpolation, projection, downloads, limits, versions."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from stylegan.checkpoint import export_generator, load_generator
from stylegan.projector import load_projected_w, render_ws
from stylegan.sampling import generate, mix_styles, save_png
from stylegan.studio import ModelSource, StudioLimits, create_app
from stylegan.training.networks import Generator
from tests.helpers import POKEDEX_NAMES, tiny_model_config, write_fake_pretrained, write_tiny_pokedex


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    G = Generator(tiny_model_config(max_resolution=8))
    out = tmp_path_factory.mktemp("studio") / "export"
    export_generator(G.eval(), out)
    return out


@pytest.fixture(scope="module")
def client(export: Path) -> TestClient:
    limits = StudioLimits(max_images=8, max_upload_bytes=20_000, max_project_steps=50)
    return TestClient(create_app(ModelSource(str(export)), limits, perceptual=False))


def test_render_matches_the_library_and_psi_changes_it(client: TestClient, export: Path) -> None:
    G = load_generator(export)
    r = client.post("/api/render", json={"items": [{"seed": 3}, {"seed": 4}], "psi": 0.5})
    assert r.status_code == 200
    imgs = [decode(u) for u in r.json()["images"]]
    np.testing.assert_array_equal(imgs[0], generate(G, seeds=[3, 4], truncation_psi=0.5)[0])  # one batch, as drawn
    r0 = client.post("/api/render", json={"items": [{"seed": 3}, {"seed": 4}], "psi": 0})
    zero = [decode(u) for u in r0.json()["images"]]
    np.testing.assert_array_equal(zero[0], zero[1])  # psi 0: every seed is the average w
    cut = client.post("/api/render", json={"items": [{"seed": 3}], "psi": 0.0, "cutoff": 2}).json()["images"][0]
    np.testing.assert_array_equal(decode(cut), generate(G, seeds=[3], truncation_psi=0.0, truncation_cutoff=2)[0])
    info = client.get("/api/info").json()
    assert info["resolution"] == 8 and info["num_ws"] == 4 and info["styles"] == {"coarse": [0, 3]}
    assert client.get("/").text.startswith("<!doctype html>") and "cdn" not in client.get("/").text.lower()


def test_mix_is_the_paper_figure(client: TestClient, export: Path) -> None:
    G = load_generator(export)
    r = client.post("/api/mix", json={"rows": [{"seed": 1}, {"seed": 2}], "cols": [{"seed": 5}],
                                      "styles": [0, 1], "psi": 1.0}).json()
    m = mix_styles(G, source_seeds=[5], destination_seeds=[1, 2], styles=(0, 2))
    assert len(r["sources"]) == 1 and len(r["destinations"]) == 2 and len(r["mixed"]) == 2
    # The studio draws parents and mixes as one batch: equal up to the last bit of a conv.
    assert np.abs(decode(r["mixed"][1][0]).astype(int) - m["mixed"][1, 0]).max() <= 1
    assert np.abs(decode(r["destinations"][0]).astype(int) - m["destinations"][0]).max() <= 1
    assert not np.array_equal(m["mixed"][1, 0], m["destinations"][1])  # the mix changed something


def test_interpolation_w_and_z(client: TestClient, export: Path) -> None:
    G = load_generator(export)
    frames = client.post("/api/interpolate", json={"items": [{"seed": 1}, {"seed": 2}], "steps": 3, "loop": False,
                                                   "psi": 1.0}).json()["frames"]
    assert len(frames) == 4
    assert np.abs(decode(frames[-1]).astype(int) - generate(G, seeds=[2])[0]).max() <= 1  # ends at seed 2
    z = client.post("/api/interpolate", json={"items": [{"seed": 1}, {"seed": 2}], "steps": 3, "space": "z"}).json()
    assert len(z["frames"]) == 6  # looped: 2 transitions x 3


@pytest.mark.parametrize("space", ["w", "z"])
@pytest.mark.parametrize("loop", [True, False])
def test_interpolation_frames_are_the_librarys(client: TestClient, export: Path, space: str, loop: bool) -> None:
    """The studio walks sampling's keyframe path: z slerp is sampling.interpolate bit for bit, w lerp is
    sampling.interpolate_ws through the studio's own ws (each seed mapped alone, as it renders them)."""
    from stylegan.sampling import interpolate, interpolate_ws, seeds_to_z

    G = load_generator(export)
    r = client.post("/api/interpolate", json={"items": [{"seed": 4}, {"seed": 0}, {"seed": 2}], "steps": 3,
                                              "space": space, "loop": loop, "psi": 0.6, "cutoff": 2})
    frames = np.stack([decode(u) for u in r.json()["frames"]])
    if space == "z":
        expected = interpolate(G, [4, 0, 2], steps=3, space="z", truncation_psi=0.6, truncation_cutoff=2, loop=loop)
    else:
        with torch.no_grad():
            ws = torch.cat([G.mapping(seeds_to_z([s], G.z_dim), truncation_psi=0.6, truncation_cutoff=2)
                            for s in (4, 0, 2)])
        expected = interpolate_ws(G, ws, steps=3, loop=loop)
        seeds_path = interpolate(G, [4, 0, 2], steps=3, truncation_psi=0.6, truncation_cutoff=2, loop=loop)
        assert np.abs(frames.astype(int) - seeds_path).max() <= 1  # the CLI's path: seeds mapped as one batch
    assert len(frames) == (9 if loop else 7)
    np.testing.assert_array_equal(frames, expected)


def test_projection_upload_edit_and_download(client: TestClient, export: Path, tmp_path: Path) -> None:
    G = load_generator(export)
    save_png(generate(G, seeds=[6], truncation_psi=0.7)[0], tmp_path / "t.png")
    r = client.post("/api/project?steps=20", content=(tmp_path / "t.png").read_bytes())
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["id"].startswith("p") and p["pixel_error"] < p["start_error"] and not p["perceptual"]
    # Edited like any seed: psi 0 gives the average, and the npz renders the same picture.
    avg = decode(client.post("/api/render", json={"items": [{"seed": 0}], "psi": 0}).json()["images"][0])
    edited = client.post("/api/render", json={"items": [{"projection": p["id"]}], "psi": 0}).json()["images"][0]
    np.testing.assert_array_equal(decode(edited), avg)
    shown = decode(client.post("/api/render", json={"items": [{"projection": p["id"]}], "psi": 1}).json()["images"][0])
    np.testing.assert_array_equal(shown, decode(p["image"]))
    npz = client.post("/api/w", json={"item": {"projection": p["id"]}, "psi": 1})
    assert npz.status_code == 200 and "attachment" in npz.headers["content-disposition"]
    (tmp_path / "w.npz").write_bytes(npz.content)
    ws, _ = load_projected_w(tmp_path / "w.npz", G)
    np.testing.assert_array_equal(render_ws(G, ws)[0], shown)


def test_limits_and_bad_input_are_4xx_with_a_message(client: TestClient) -> None:
    def detail(r: object, code: int) -> str:
        assert r.status_code == code, (r.status_code, r.text)
        return r.json()["detail"]

    assert "at most 8" in detail(client.post("/api/render", json={"items": [{"seed": i} for i in range(9)]}), 413)
    assert "psi" in detail(client.post("/api/render", json={"items": [{"seed": 1}], "psi": 2}), 422)
    bad_cutoff = client.post("/api/render", json={"items": [{"seed": 1}], "cutoff": 9})
    assert "cutoff must be in 1..4" in detail(bad_cutoff, 422)
    assert "seed" in detail(client.post("/api/render", json={"items": [{"seed": -1}]}), 422)
    assert "no projection" in detail(client.post("/api/render", json={"items": [{"projection": "p999"}]}), 404)
    assert "no versions" in detail(client.get("/api/info?version=3"), 404)
    assert "z slerp needs seeds" in detail(client.post("/api/interpolate", json={
        "items": [{"seed": 1}, {"projection": "p1"}], "space": "z"}), 422)
    assert "at most 256" in detail(client.post("/api/interpolate", json={
        "items": [{"seed": 1}, {"seed": 2}], "steps": 200}), 413)
    assert "at most 20,000" in detail(client.post("/api/project", content=b"x" * 20_001), 413)
    assert "limit of 50" in detail(client.post("/api/project?steps=51", content=b"x"), 413)
    assert "not a readable image" in detail(client.post("/api/project", content=b"garbage"), 400)
    assert "no picture" in detail(client.post("/api/project", content=b""), 400)


def test_one_projection_at_a_time(client: TestClient) -> None:
    studio = client.app.state.studio
    assert studio.projecting.acquire(blocking=False)  # as if one were running
    try:
        r = client.post("/api/project", content=b"anything")
        assert r.status_code == 429 and "already running" in r.json()["detail"]
    finally:
        studio.projecting.release()


@pytest.fixture(scope="module")
def pokedex_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_pokedex(tmp_path_factory.mktemp("pokedex"))


def test_render_names_each_image_with_a_pokedex_and_not_without(client: TestClient, export: Path,
                                                                 pokedex_dir: Path, tmp_path: Path) -> None:
    from stylegan.pokedex import load_pokedex
    from stylegan.pokedex.explain import explain

    body = {"items": [{"seed": 3}, {"seed": 4}], "psi": 0.5}
    plain = client.post("/api/render", json=body).json()
    assert "looks_like" not in plain and client.get("/api/info").json()["pokedex"] is False
    named = TestClient(create_app(ModelSource(str(export), pokedex=str(pokedex_dir)), perceptual=False))
    assert named.get("/api/info").json()["pokedex"] is True
    r = named.post("/api/render", json=body).json()
    assert r["images"] == plain["images"]  # the pictures do not change; their names come beside them
    images = np.stack([decode(u) for u in r["images"]])
    assert r["looks_like"] == [e.to_dict() for e in explain(load_pokedex(pokedex_dir), images)]
    first = r["looks_like"][0]
    assert first["name"] and len(first["looks_like"]) == 3
    assert {m["name"] for m in first["looks_like"]} <= set(POKEDEX_NAMES) and set(first["looks_like"][0]) == {
        "name", "species_id", "prob"}
    # A Pokédex folder that does not load means no names (and a note why), never an error.
    broken = ModelSource(str(export), pokedex=str(tmp_path / "missing"))
    assert broken.pokedex is None and "no Pokédex" in broken.pokedex_note


def test_a_shipped_model_is_the_default_and_brings_its_pokedex(export: Path, pokedex_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from stylegan import pretrained
    from stylegan.cli import main
    from stylegan.cli.studio import _default_model

    G = load_generator(export)
    root = write_fake_pretrained(tmp_path / "pretrained", G)
    source = ModelSource("pretrained:sprites-32", pretrained_root=root)
    assert source.name == "pretrained:sprites-32" and source.pokedex is not None  # its own Pokédex
    c = TestClient(create_app(source, perceptual=False))
    info = c.get("/api/info").json()
    assert info["model"] == info["name"] == "pretrained:sprites-32" and info["pokedex"] and not info["registry"]
    r = c.post("/api/render", json={"items": [{"seed": 3}]}).json()
    np.testing.assert_array_equal(decode(r["images"][0]), generate(G, seeds=[3], truncation_psi=0.7)[0])
    assert len(r["looks_like"]) == 1 and len(r["looks_like"][0]["looks_like"]) == 3

    # `pokegan studio` with no --model opens the shipped model, named by its Pokédex.
    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    monkeypatch.setattr(pretrained, "ROOT", root)
    assert main(["studio"]) == 0
    opened = apps[-1].state.studio.source
    assert opened.spec == "pretrained:sprites-32" and opened.pokedex is not None
    assert "serving pretrained:sprites-32" in capsys.readouterr().err
    # --pokedex names an export folder's images; one that does not load is said, and serving goes on.
    assert main(["studio", "--model", str(export), "--pokedex", str(pokedex_dir)]) == 0
    assert apps[-1].state.studio.source.pokedex is not None
    assert main(["studio", "--model", str(export), "--pokedex", str(tmp_path / "missing")]) == 0
    assert apps[-1].state.studio.source.pokedex is None and 'no "looks like" names' in capsys.readouterr().err
    # Without the shipped model: the registry's champion, as before.
    monkeypatch.setattr(pretrained, "ROOT", tmp_path / "nothing")
    assert _default_model(str(tmp_path / "no-params.yaml")) == "models:/pokemon-stylegan@champion"
    # A damaged shipped file is refused before serving.
    weights = root / "sprites-32" / "generator.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(pretrained.PretrainedError, match="damaged or swapped"):
        ModelSource("pretrained:sprites-32", pretrained_root=root)


class FakeRegistry:
    """Two versions of different generators, as flows.studio_registry reports them."""

    def __init__(self, exports: dict[str, Path]) -> None:
        self.exports = exports
        self.loads: list[str] = []

    def resolve(self, uri: str) -> tuple[str, str]:
        assert uri == "models:/poke@champion"
        return "poke", "2"

    def list_versions(self, name: str) -> list[dict]:
        return [{"version": "2", "aliases": ["champion"], "metrics": {"fd_effnet": 10.0}, "decision": "promoted",
                 "reason": "fd_effnet 10 < 20 of v1"},
                {"version": "1", "aliases": [], "metrics": {"fd_effnet": 20.0}, "decision": "promoted",
                 "reason": "no champion yet"}]

    def load(self, name: str, version: str, device: object = "cpu") -> Generator:
        if version not in self.exports:
            raise LookupError(f"registered model 'poke' has no version {version}")
        self.loads.append(version)
        return load_generator(self.exports[version])


def test_switching_registered_versions(export: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    other = Generator(tiny_model_config(max_resolution=8))
    export_generator(other.eval(), tmp_path / "v1")
    reg = FakeRegistry({"1": tmp_path / "v1", "2": export})
    c = TestClient(create_app(ModelSource("models:/poke@champion", registry=reg), perceptual=False))
    v = c.get("/api/versions").json()
    assert v["registry"] and v["default_version"] == "2" and [x["version"] for x in v["versions"]] == ["2", "1"]
    a = c.post("/api/render", json={"items": [{"seed": 1}]}).json()["images"][0]
    b = c.post("/api/render", json={"items": [{"seed": 1}], "version": "1"}).json()["images"][0]
    assert a != b
    v1 = load_generator(tmp_path / "v1")
    np.testing.assert_array_equal(decode(b), generate(v1, seeds=[1], truncation_psi=0.7)[0])
    c.post("/api/render", json={"items": [{"seed": 2}], "version": "1"})
    assert reg.loads == ["2", "1"]  # loaded once each, then cached
    r = c.post("/api/render", json={"items": [{"seed": 1}], "version": "7"})
    assert r.status_code == 404 and "no version 7" in r.json()["detail"]


def test_pokegan_studio_serves_on_loopback_by_default(export: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from stylegan.cli import main

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    assert main(["studio", "--model", str(export), "--port", "8123", "--max-images", "4"]) == 0
    (call,) = calls
    assert call["host"] == "127.0.0.1" and call["port"] == 8123
    assert call["app"].state.studio.limits.max_images == 4
    assert "http://127.0.0.1:8123/" in capsys.readouterr().err
    assert main(["studio", "--model", str(export), "--host", "0.0.0.0"]) == 0
    assert "anyone who can reach this address" in capsys.readouterr().err
    assert main(["studio", "--model", str(export.parent / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_studio_and_projector_import_no_web_or_tracking_stack_at_module_level() -> None:
    """Top-level imports of the new library modules: only the library's own dependencies (app.py,
    which create_app imports lazily behind a clear error, is the one place FastAPI is named)."""
    import ast
    import sys

    root = Path(__file__).resolve().parents[1] / "stylegan"
    allowed = {"torch", "numpy", "PIL", "pandas", "safetensors", "yaml", "stylegan", "__future__"}
    for path in [root / "projector.py", *sorted((root / "studio").glob("*.py"))]:
        if path.name == "app.py":
            continue
        for node in ast.parse(path.read_text()).body:  # module level only; functions import lazily
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name} at module level"
