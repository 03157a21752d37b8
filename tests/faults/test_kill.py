"""kill -9 during training, prepare's swap, export, registration and sampling: the next run recovers.

Every kill is a SIGKILL the child sends itself at a chosen event (``_faultlib.arm``): mid-step,
inside a checkpoint write (temp file written, not yet renamed), between the two renames of a
folder swap, after the swap before the old copy is removed, before each registry call. Each
test prints one ``FIGURE`` line (docs/benchmarks.md, "Fault injection"); run with ``-s`` to see them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.faults import _faultlib as fl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fl.tiny_project(tmp_path_factory.mktemp("faults-project"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- training


def kill_plan(seed: int = 20261130, n: int = 40) -> list[fl.Kill]:
    """Seeded kill points: an Adam step, or the fsync / rename of a checkpoint (or snapshot) write."""
    rng = random.Random(seed)
    plan: list[fl.Kill] = []
    for _ in range(n):
        kind = rng.choice(["step", "step", "fsync", "replace"])
        plan.append(("step", rng.randint(1, 4), "") if kind == "step" else (kind, rng.randint(1, 2), "/checkpoints/"))
    return plan


def test_kill_during_training_resumes_to_identical_export(project: dict[str, Any], tmp_path: Path) -> None:
    ref = project[0]
    run_dir, export, log = tmp_path / "run", tmp_path / "export", tmp_path / "kills.log"
    argv = fl.train_argv(project["params"], project["data"], run_dir, export)
    t0 = time.perf_counter()
    kills, codes = 0, []
    for kill in kill_plan():
        if kills == 10:
            break
        code = fl.run_child(fl.train_child, argv, [kill], str(log))
        codes.append(code)
        assert code in (-9, 0), f"a resume failed (exit {code}) after {kills} kills; see the output above"
        kills += code == -9
        if code == 0:
            break  # finished before its kill point: nothing left to kill
    assert kills >= 10, f"only {kills} kills landed before the run finished ({codes}); shorten the kill plan"
    assert fl.run_child(fl.train_child, argv, [], None) == 0
    seconds = time.perf_counter() - t0
    notes = log.read_text().splitlines()
    in_ckpt = [n for n in notes if not n.startswith("step")]
    assert len(notes) == kills and in_ckpt, notes
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "a killed write's temp file was not cleaned up"
    same = all((export / n).read_bytes() == (ref["export"] / n).read_bytes()
               for n in ("generator.safetensors", "generator.json"))
    print(f"\nFIGURE kill-train: {kills} SIGKILLs ({kills - len(in_ckpt)} mid-step, {len(in_ckpt)} inside a checkpoint "
          f"or snapshot write), {kills}/{kills} resumes ok, export byte-identical to the uninterrupted run: {same}; "
          f"{seconds:.1f} s for {len(codes) + 1} processes (uninterrupted run: {project['seconds']:.1f} s)")
    assert same


# ----------------------------------------------------------------------------- prepare's swap


def _prepared_ok(folder: Path) -> int:
    """Images in a complete prepare output (summary, manifest and arrays agree), else an assertion."""
    summary = json.loads((folder / "summary.json").read_text())
    for r in summary["resolutions"]:
        assert np.load(folder / f"images_{r}.npy", mmap_mode="r").shape[0] == summary["images"]
    assert (folder / "manifest.csv").is_file()
    return int(summary["images"])


def test_kill_during_prepare_swap_loses_nothing(tmp_path: Path) -> None:
    from stylegan.config import DataConfig, from_dict, to_dict
    from stylegan.data.prepare import prepare
    from tests.flows_helpers import sprite_folder

    sources = {8: sprite_folder(tmp_path / "src8", n=8), 11: sprite_folder(tmp_path / "src11", n=11, seed=1)}
    out = tmp_path / "data" / "prepared"

    def cfg(n: int) -> DataConfig:
        return from_dict(DataConfig, {"source": str(sources[n]), "out_dir": str(out), "max_resolution": 16,
                                      "min_size": 8, "workers": 1}, "data")

    assert prepare(cfg(8), tmp_path, workers=1, log=lambda _: None)["images"] == 8
    points = {"before the swap": ("replace", 1, f"src={out}"), "between the renames": ("replace", 1, f"dst={out}"),
              "after the swap": ("rmtree", 1, ".prepared.old-")}
    have, results = 8, []
    for name, kill in points.items():
        new = 11 if have == 8 else 8
        code = fl.run_child(fl.prepare_child, to_dict(cfg(new)), str(tmp_path), [kill], None)
        assert code == -9, f"{name}: the child was not killed (exit {code})"
        if out.exists():
            got = _prepared_ok(out)  # the old output or the complete new one, never a mix
            assert got in (have, new)
        else:  # killed between the renames: the old output waits next to it, complete
            (old,) = tmp_path.joinpath("data").glob(".prepared.old-*")
            assert _prepared_ok(old) == have
        assert prepare(cfg(new), tmp_path, workers=1, log=lambda _: None)["images"] == new
        assert _prepared_ok(out) == new and fl.siblings(out) == [], (name, fl.siblings(out))
        results.append(name)
        have = new
    print(f"\nFIGURE kill-prepare: {len(results)} SIGKILLs in prepare's swap ({', '.join(results)}): the output was "
          "always complete (old or new) or restorable, every next prepare recovered, no temp folders left")


# ----------------------------------------------------------------------------- export and registration


_ARTIFACT_SHA: dict[tuple[str, str], str] = {}  # versions are immutable: download each once


def _registry_consistent(client: Any, name: str) -> dict[str, str]:
    """Every alias points at a version whose logged weights exist and hash to its generator.sha256 tag."""
    import mlflow

    model = client.get_registered_model(name)
    seen = {}
    for alias, version in model.aliases.items():
        mv = client.get_model_version(name, str(version))
        key = (mv.source, str(version))
        if key not in _ARTIFACT_SHA:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
            (weights,) = local.rglob("generator.safetensors")
            _ARTIFACT_SHA[key] = _sha(weights)
        assert _ARTIFACT_SHA[key] == mv.tags["generator.sha256"], f"alias {alias} -> v{version}: weights differ"
        seen[alias] = str(version)
    return seen


@pytest.mark.pipeline
def test_kill_during_export_and_registration_recovers(project: dict[str, Any], tmp_path: Path,
                                                      mlflow_store: str) -> None:
    pytest.importorskip("mlflow")
    from flows.evaluate import ExportMismatchError, check_export_matches
    from flows.tracking import store
    from flows.train import publish
    from stylegan.training import Trainer

    root = tmp_path
    client = store.setup(root)
    run_id = client.create_run(store.ensure_experiment(client, store.EXPERIMENT, root)).info.run_id
    export, registered = root / "models" / "generator", root / "models" / "registered.json"

    def spec(seed: int) -> dict[str, Any]:
        return {"tracking_uri": mlflow_store, "params": str(project["params"]), "data_root": str(project["data"]),
                "run_dir": str(project[seed]["run_dir"]), "export_dir": str(export), "registered": str(registered),
                "root": str(root), "run_id": run_id, "key": f"run{seed}", "resolution": 8}

    first = publish(fl.publish_job(spec(0)), 8, log=lambda _: None)
    client.set_registered_model_alias(first["name"], "champion", first["version"])
    job_b = fl.publish_job(spec(1))
    Trainer(job_b.model_cfg, job_b.train_cfg, job_b.data_root, job_b.run_dir, device="cpu").export(
        tmp_path / "b")
    shas = {0: first["generator_sha256"], 1: _sha(tmp_path / "b" / "generator.safetensors")}
    assert shas[0] != shas[1]
    # Weights B (run1: the 4x4 stage) are new to the registry: kills around logging and registering them.
    # Then weights A again (already registered): kills around the export swap and the record.
    alias = ("call", 1, "mlflow.tracking.client:MlflowClient.set_registered_model_alias")
    plan = [
        (1, "before logging the model", ("call", 1, "flows.tracking.logged_model:log_generator_model")),
        (1, "after creating the version, before its alias", alias),  # logged and registered, alias not moved
        (0, "before the export swap", ("replace", 1, f"src={export}")),
        (0, "between the export renames", ("replace", 1, f"dst={export}")),
        (0, "before moving the alias to a known version", alias),
        (0, "before registered.json", ("replace", 1, f"dst={registered}")),
    ]
    refused = 0
    for seed, name, kill in plan:
        code = fl.run_child(fl.publish_child, spec(seed), [kill], None)
        assert code == -9, f"{name}: the child was not killed (exit {code})"
        _registry_consistent(client, first["name"])
        record = json.loads(registered.read_text())
        if export.exists():
            assert _sha(export / "generator.safetensors") in shas.values()
            try:  # evaluate's guard: agrees, or refuses (never measures one generator and promotes another)
                assert check_export_matches(export, record, client) == record["generator_sha256"]
            except ExportMismatchError as exc:
                assert "re-run the train stage" in str(exc)
                refused += 1
        else:
            (old,) = export.parent.glob(".generator.old-*")
            assert _sha(old / "generator.safetensors") in shas.values()
    # The next complete run recovers: record, export, version and its weights agree.
    final = publish(fl.publish_job(spec(0)), 8, log=lambda _: None)
    aliases = _registry_consistent(client, final["name"])
    assert check_export_matches(export, json.loads(registered.read_text()), client) == shas[0]
    assert str(aliases["candidate"]) == final["version"] == first["version"] and fl.siblings(export) == []
    versions = client.search_model_versions(f"name = '{final['name']}'")
    assert len(versions) == 2, [v.version for v in versions]  # the same weights are never registered twice
    print(f"\nFIGURE kill-register: {len(plan)} SIGKILLs around export and registration; registry aliases always "
          f"pointed at versions whose weights exist and match; evaluate refused {refused} mismatched "
          f"export/record states; the next run recovered with {len(versions)} versions for 2 distinct weights")


# ----------------------------------------------------------------------------- sampling


def test_kill_during_sampling_recovers(project: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("prefect")
    from flows.sample import _write_samples
    from stylegan.checkpoint import load_generator

    G = load_generator(project[0]["export"])
    out = tmp_path / "samples"
    _write_samples(G, list(range(4)), 0.7, "const", out)
    have = 4
    points = {"mid-write": ("fsync", 3, ".samples.tmp-"), "between the renames": ("replace", 1, f"dst={out}"),
              "after the swap": ("rmtree", 1, ".samples.old-")}
    for name, kill in points.items():
        new = 6 if have == 4 else 4
        code = fl.run_child(fl.sample_child, str(project[0]["export"]), list(range(new)), str(out), [kill], None)
        assert code == -9, f"{name}: the child was not killed (exit {code})"
        folder = out if out.exists() else next(tmp_path.glob(".samples.old-*"))
        count = json.loads((folder / "sample.json").read_text())["count"]
        assert count in (have, new) and len(list(folder.glob("seed*.png"))) == count, name
        _write_samples(G, list(range(new)), 0.7, "const", out)
        assert len(list(out.glob("seed*.png"))) == new and fl.siblings(out) == [], (name, fl.siblings(out))
        have = new
    print(f"\nFIGURE kill-sample: {len(points)} SIGKILLs while sampling ({', '.join(points)}): the samples folder "
          "was always complete or restorable; every next run recovered and left no temp folders")
