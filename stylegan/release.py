"""Package a trained generator as a shipped model: ``pretrained/NAME/`` and its index entry.

``package`` takes an export (``pokegan train --export``), stores the weights as fp16 (half the
bytes; the network computes in fp32 after loading), copies the Pokédex that names its samples,
measures every metric of the *shipped* weights (``evaluate_generator``, dex features included),
draws the figures of the model card (a captioned seed grid, the plain grid the tests redraw
bit for bit, the nearest-training-image sheet), writes ``release.json`` (what it was trained on,
how long, with which code) and the card, then records every file's sha256 in
``pretrained/index.json``. The folder is built in a temp sibling and swapped in whole.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stylegan import pretrained, sampling
from stylegan.checkpoint import CONFIG_NAME, WEIGHTS_NAME, export_generator_state, load_generator, read_generator_info
from stylegan.config import EvaluateConfig
from stylegan.io import atomic_write_bytes, atomic_write_json, replace_dir, sha256_file

MAX_WEIGHTS_BYTES = 20_000_000  # a shipped generator lives in git: at most 20 MB
GRID_SEEDS = list(range(16))  # the committed grid the tests redraw (grid.png, samples.png)
GRID_PSI = 0.7
CARD_NAME = "README.md"


def fp16_export(export_dir: Path, out_dir: Path) -> Path:
    """``export_dir``'s generator again, its float tensors stored as fp16."""
    _, info = read_generator_info(export_dir)
    G = load_generator(export_dir)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in G.state_dict().items()}
    meta = {**info.get("metadata", {}), "storage": "fp16"}
    return export_generator_state(half, G.cfg, out_dir, int(info["resolution"]), meta)


def _seed_images(G: torch.nn.Module) -> Any:
    return sampling.generate(G, seeds=GRID_SEEDS, truncation_psi=GRID_PSI)


def package(
    export_dir: str | Path,  # pokegan train --export DIR (fp32)
    name: str,  # pretrained/<name>
    *,
    pokedex_dir: str | Path,  # the trained Pokédex (models/pokedex)
    data_root: str | Path,  # the prepared sprites the metrics compare with
    eval_cfg: EvaluateConfig,
    record: dict[str, Any],  # training facts for release.json: kimg, CPU hours, data digest, params, commit
    card: Callable[[dict[str, Any]], str] | None = None,  # release.json -> the card's Markdown; None = model_card
    root: Path | None = None,  # None = pretrained.ROOT
    log: Callable[[str], None] = print,
) -> Path:
    """Build ``root/name`` from the export and register it in ``root/index.json``; returns the folder."""
    from stylegan.metrics import evaluate_generator
    from stylegan.pokedex import load_pokedex
    from stylegan.pokedex.explain import explain
    from stylegan.reports import captioned_grid

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"release name {name!r} must be a plain folder name such as sprites-64")
    dex = load_pokedex(pokedex_dir)  # refuse a broken Pokédex before any work
    root = root or pretrained.ROOT
    dest = root / name

    def fill(tmp: Path) -> dict[str, Any]:
        fp16_export(Path(export_dir), tmp)
        size = (tmp / WEIGHTS_NAME).stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise ValueError(f"the fp16 generator is {size:,} bytes, over the {MAX_WEIGHTS_BYTES:,} a shipped model "
                             "may take; ship a smaller network")
        shutil.copytree(pokedex_dir, tmp / pretrained.POKEDEX_DIR,
                        ignore=shutil.ignore_patterns(".pokegan-output", ".*"))
        G = load_generator(tmp)  # what users get: the fp16 weights, computing in fp32
        work = tmp / ".eval"
        cfg = replace(eval_cfg, pokedex=str(tmp / pretrained.POKEDEX_DIR))
        metrics = evaluate_generator(G, data_root, cfg, work, work / "reports", log=log)
        shutil.copyfile(work / "reports" / "novelty_pixel.png", tmp / "nearest.png")
        images = _seed_images(G)
        sampling.save_png(sampling.image_grid(images, cols=8), tmp / "samples.png")
        found = explain(dex, images)
        captions = [[f"{s}: {e.name}", *(str(m) for m in e.looks_like)] for s, e in zip(GRID_SEEDS, found,
                                                                                       strict=True)]
        sampling.save_png(captioned_grid(images, captions), tmp / "grid.png")
        atomic_write_json(tmp / "looks_like.json", {"truncation_psi": GRID_PSI,
                                                    "samples": {str(s): e.to_dict() for s, e in
                                                                zip(GRID_SEEDS, found, strict=True)}})
        shutil.rmtree(work)
        info = json.loads((tmp / CONFIG_NAME).read_text())
        release = {"name": name, "resolution": info["resolution"], "weights_bytes": size,
                   "parameters": sum(p.numel() for p in G.parameters()), "metrics": metrics,
                   "evaluation": {"num_samples": cfg.num_samples, "num_real": cfg.num_real, "seed": cfg.seed,
                                  "truncation_psi": cfg.truncation_psi, "data": _display_path(data_root)},
                   "pokedex": {k: dex.info.get(k) for k in ("sha256", "top1", "top5", "names_package")},
                   "grid": {"seeds": GRID_SEEDS, "truncation_psi": GRID_PSI, "noise_mode": "const"},
                   **record}
        atomic_write_json(tmp / "release.json", release)
        atomic_write_bytes(tmp / CARD_NAME, (card or model_card)(release).encode())
        return release

    release = replace_dir(dest, fill, what="shipped model")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    entries = pretrained.index(root) if (root / pretrained.INDEX_NAME).is_file() else {}
    entries[name] = {"resolution": release["resolution"], "kimg": release.get("kimg"),
                     "description": release.get("description", ""),
                     "files": {rel: sha256_file(dest / rel) for rel in files}}
    atomic_write_json(root / pretrained.INDEX_NAME, entries)
    return dest


def git_commit() -> str:
    """The checkout's commit (12 hex digits, ``+dirty`` with uncommitted changes), or "unknown"."""
    repo = pretrained.ROOT.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=repo)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=repo).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def training_record(export_dir: str | Path, data_root: str | Path, *, params: str | Path, profile: str | None,
                    run_dir: str | Path | None, command: str, cpu_hours: float | None, machine: str,
                    commit: str | None = None) -> dict[str, Any]:
    """release.json's training facts for a CPU training (``pokegan train``, ``scripts/release.sh``):
    the data and its digest, the merged params, the wall time from the run's events.jsonl."""
    from stylegan import profile as profiles
    from stylegan.metrics.reference import file_hash

    _, info = read_generator_info(export_dir)
    merged = profiles.load_params_with(profile, params)
    data = Path(data_root)
    res = int(info["resolution"])
    summary = json.loads((data / "summary.json").read_text()) if (data / "summary.json").is_file() else {}
    wall = None
    events = Path(run_dir) / "events.jsonl" if run_dir else None
    if events is not None and events.is_file():
        ticks = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        wall = sum(t["stats"].get("sec_per_tick", 0.0) for t in ticks if t.get("event") == "tick") / 3600
    return {
        "data": f"{summary.get('package', data)} ({summary.get('subset', '?')}, {summary.get('images', '?')} images)",
        "data_digest": file_hash(data / f"images_{res}.npy")[:16],
        "profile": profile, "command": command, "commit": commit or git_commit(),
        "seed": merged.get("train", {}).get("seed", 0), "kimg": info.get("metadata", {}).get("kimg"),
        "wall_hours": round(wall, 3) if wall is not None else None,
        "cpu_hours": cpu_hours, "machine": machine,
        "params": {k: merged[k] for k in ("model", "train") if k in merged},
    }


def gpu_training_record(export_dir: str | Path, data_root: str | Path, gpu_record: str | Path, *,
                        commit: str | None = None) -> dict[str, Any]:
    """release.json's training facts for a GPU check's release step, from its gpu_check-*.json
    (benchmarks/gpu_check.py): device, training seconds, kimg, schedule, model widths."""
    from stylegan.metrics.reference import file_hash

    try:
        run = json.loads(Path(gpu_record).read_text())
        train, device = run["training"], run["device"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--gpu-record {gpu_record}: not a GPU check record (gpu_check-*.json with a "
                         f"training section): {exc}") from None
    if train.get("status") != "ok":
        raise ValueError(f"--gpu-record {gpu_record}: its release training did not finish ({train.get('error')})")
    _, info = read_generator_info(export_dir)
    res = int(info["resolution"])
    cmd = " ".join(run.get("command", []))
    hours = round(float(train["seconds"]) / 3600, 4)
    schedule = {k: train.get(k) for k in ("start_resolution", "batch_sizes", "fade_kimg", "stab_kimg", "amp",
                                          "channels_last", "r1_interval")}
    return {
        "data": train.get("data"), "data_digest": file_hash(Path(data_root) / f"images_{res}.npy")[:16],
        "profile": None, "command": f"bash benchmarks/{cmd.replace('gpu_check.py', 'gpu_check.sh')}",
        "commit": commit or git_commit(), "seed": 0, "kimg": train.get("kimg"),
        "wall_hours": hours, "cpu_hours": None, "gpu_hours": hours,
        "machine": f"one {device.get('name')} (torch {device.get('torch')}, {run.get('created_utc')})",
        "params": {"model": train.get("model"), "train": {**schedule, "lr": run.get("settings", {}).get("train_lr")}},
        "fd_effnet_on_device": train.get("fd_effnet"),
    }


def _display_path(path: str | Path) -> str:
    """``path`` relative to the checkout when inside it (the card's commands run from there)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(pretrained.ROOT.parent).as_posix()
    except ValueError:
        return str(path)


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _recipe_line(train: dict[str, Any]) -> str:
    where = (f"`params.yaml` with `{train['profile']}`" if train.get("profile")
             else f"the settings in `release.json` (model {json.dumps(train.get('params', {}).get('model'))})")
    return (f"- Recipe: {where} (command: `{train.get('command', 'bash scripts/release.sh')}`), code commit "
            f"`{train.get('commit', '?')}`, seed {train.get('seed', 0)}.")


def _compute_line(train: dict[str, Any]) -> str:
    kimg = f"{_fmt(train.get('kimg'), 4)} kimg (thousands of images shown)"
    if train.get("gpu_hours") is not None:
        return (f"- Compute: {kimg} in {float(train['gpu_hours']) * 60:.1f} minutes of training on "
                f"{train.get('machine')}.")
    spent = [f"{_fmt(train[k])} {what}" for k, what in (("wall_hours", "hours of wall time"),
                                                        ("cpu_hours", "CPU hours")) if train.get(k) is not None]
    return (f"- Compute: {kimg}{' in ' + ' and '.join(spent) if spent else ''} on "
            f"{train.get('machine', 'a 2-core CPU')}.")


def model_card(release: dict[str, Any]) -> str:
    """The shipped model's card (README.md in its folder), from its release.json."""
    m = release["metrics"]
    name, res = release["name"], release["resolution"]
    rows = [("fd_dex", "Fréchet distance in the Pokédex's features (the champion metric), lower is better"),
            ("kid_dex", "kernel inception distance in the same features"),
            ("precision_dex", "share of samples on the real sprites' manifold (dex features)"),
            ("recall_dex", "share of real sprites on the samples' manifold (dex features)"),
            ("memorization_dex", "share of samples that copy a reference sprite (dex features)"),
            ("fd_random", "FD in a randomly initialised network's features (no ImageNet, no training)"),
            ("swd", "sliced Wasserstein distance x1e3 (pixels)"),
            ("fd_effnet", "FD in EfficientNet-Lite0's ImageNet features (secondary)"),
            ("precision", "precision in ImageNet features"), ("recall", "recall in ImageNet features"),
            ("memorization", "share of samples within the copy threshold of a training image (pixels)")]
    table = "\n".join(f"| `{k}` | {_fmt(m[k])} | {what} |" for k, what in rows if k in m)
    compare = release.get("compare", {})
    compare_rows = "\n".join(
        f"| {label} | {_fmt(v.get('fd_dex'))} | {_fmt(v.get('precision_dex'))} | {_fmt(v.get('recall_dex'))} | "
        f"{_fmt(v.get('swd'))} | {_fmt(v.get('fd_effnet'))} |" for label, v in compare.items())
    train = release.get("training", {})
    ev = release["evaluation"]
    dex = release["pokedex"]
    lines = [
        f"# `pretrained:{name}`: a StyleGAN that draws {res}x{res} Pokémon sprites",
        "",
        release.get("description", ""),
        "",
        "![16 seeds at psi 0.7, each with its name and the three species it looks like](grid.png)",
        "",
        f"Seeds 0-15, truncation psi {release['grid']['truncation_psi']}, constant noise. Under each tile: its "
        "name (a portmanteau of the two species it looks most like) and the Pokédex's top-3 species.",
        "",
        "```bash",
        f"pokegan sample --model pretrained:{name} --seeds 0-15 --explain --grid grid.png",
        f"pokegan studio --model pretrained:{name}",
        "```",
        "",
        "## What it is",
        "",
        f"- The project's StyleGAN generator (mapping network, constant 4x4 input, AdaIN, noise, progressive "
        f"growing), {release['parameters']:,} parameters, stored as fp16 ({release['weights_bytes']:,} bytes); it "
        "computes in fp32 after loading. `generator.json` holds its config; loading checks the sha256 in "
        "`pretrained/index.json`, the model limits and the safetensors header, and runs no pickle.",
        f"- `pokedex/`: the Pokédex network that names its samples (held-out top-1 {_fmt(dex.get('top1'))}, "
        f"top-5 {_fmt(dex.get('top5'))}"
        + (f"; names from the npm package `{dex['names_package']}`)." if dex.get("names_package") else ")."),
        "",
        "## What it was trained on",
        "",
        f"- Data: {train.get('data', 'the default sprites')} (data digest `{train.get('data_digest', '?')}`). The "
        "images are copyright The Pokémon Company; the package that redistributes them (PokeAPI's sprites) "
        "is CC0 for its own work. This model is a research and teaching artefact; its samples are derived from "
        "those images and carry no licence of their own from this project.",
        _recipe_line(train),
        _compute_line(train),
        "",
        "## Metrics",
        "",
        f"Measured on the shipped (fp16) weights: {ev['num_samples']} samples (psi {ev['truncation_psi']}, random "
        f"noise, seed {ev['seed']}) against {ev['num_real']} real sprites. Reproduce with "
        f"`pokegan evaluate --model pretrained:{name} --pokedex pretrained/{name}/pokedex "
        f"--data {ev.get('data', 'data/prepared')}`.",
        "",
        "| metric | value | what it measures |",
        "|---|---|---|",
        table,
        "",
    ]
    if compare_rows:
        lines += [f"Beside it, measured with the same protocol against the same {ev['num_real']} real sprites "
                  "(`pokegan release --compare`):", "",
                  "| model | fd_dex | precision_dex | recall_dex | swd | fd_effnet |", "|---|---|---|---|---|---|",
                  f"| pretrained:{name} | {_fmt(m.get('fd_dex'))} | {_fmt(m.get('precision_dex'))} | "
                  f"{_fmt(m.get('recall_dex'))} | {_fmt(m.get('swd'))} | {_fmt(m.get('fd_effnet'))} |",
                  compare_rows, ""]
    lines += [
        "## Nearest training images",
        "",
        "![each sample with its 3 nearest training images in pixel space](nearest.png)",
        "",
        "Each sample beside its three nearest training sprites (pixel space, all training images searched); a "
        "red frame marks a copy.",
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in release.get("limits", [])],
        "",
    ]
    return "\n".join(lines)
