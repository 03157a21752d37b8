"""pokegan models and pokegan release: the generators that ship with the project."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from stylegan.cli.options import check_dir_arg


def _models(args: argparse.Namespace) -> int:
    from stylegan import pretrained

    root = Path(args.root) if args.root else pretrained.ROOT
    entries = pretrained.index(root)
    if not entries:
        print(f"no shipped models in {root}")
        return 0
    for name, entry in sorted(entries.items()):
        release = root / name / "release.json"
        metrics = json.loads(release.read_text()).get("metrics", {}) if release.is_file() else {}
        figures = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("fd_dex", "recall_dex", "swd") if k in metrics)
        print(f"pretrained:{name}  {entry.get('resolution')}x{entry.get('resolution')}  {entry.get('kimg')} kimg"
              f"{'  ' + figures if figures else ''}")
        if entry.get("description"):
            print(f"    {entry['description']}")
        print(f"    pokegan sample --model pretrained:{name} --seeds 0-15 --explain")
        print(f"    card: {root / name / 'README.md'}")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the generators that ship with the project (pretrained:NAME)")
    p.add_argument("--root", default=None, help="the shipped models' folder (default: pretrained/ in the checkout)")
    p.set_defaults(func=_models)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _training_record(args: argparse.Namespace) -> dict:
    from stylegan import profile
    from stylegan.checkpoint import read_generator_info
    from stylegan.metrics.reference import file_hash

    _, info = read_generator_info(args.export)
    params = profile.load_params_with(args.profile, args.params)
    data = Path(args.data)
    res = int(info["resolution"])
    summary = json.loads((data / "summary.json").read_text()) if (data / "summary.json").is_file() else {}
    wall = None
    events = Path(args.run_dir) / "events.jsonl" if args.run_dir else None
    if events is not None and events.is_file():
        ticks = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        wall = sum(t["stats"].get("sec_per_tick", 0.0) for t in ticks if t.get("event") == "tick") / 3600
    return {
        "data": f"{summary.get('package', data)} ({summary.get('subset', '?')}, {summary.get('images', '?')} images)",
        "data_digest": file_hash(data / f"images_{res}.npy")[:16],
        "profile": args.profile, "command": args.command_line, "commit": _git_commit(),
        "seed": params.get("train", {}).get("seed", 0), "kimg": info.get("metadata", {}).get("kimg"),
        "wall_hours": round(wall, 3) if wall is not None else None,
        "cpu_hours": args.cpu_hours, "machine": args.machine,
        "params": {k: params[k] for k in ("model", "train") if k in params},
    }


def _gpu_training_record(args: argparse.Namespace) -> dict:
    """The training facts of a GPU check's release step (benchmarks/gpu_check.py's JSON record)."""
    from stylegan.checkpoint import read_generator_info
    from stylegan.metrics.reference import file_hash

    try:
        run = json.loads(Path(args.gpu_record).read_text())
        train, device = run["training"], run["device"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--gpu-record {args.gpu_record}: not a GPU check record (gpu_check-*.json with a "
                         f"training section): {exc}") from None
    if train.get("status") != "ok":
        raise ValueError(f"--gpu-record {args.gpu_record}: its release training did not finish ({train.get('error')})")
    _, info = read_generator_info(args.export)
    res = int(info["resolution"])
    cmd = " ".join(run.get("command", []))
    return {
        "data": train.get("data"), "data_digest": file_hash(Path(args.data) / f"images_{res}.npy")[:16],
        "profile": None, "command": f"bash benchmarks/{cmd.replace('gpu_check.py', 'gpu_check.sh')}",
        "commit": args.commit or _git_commit(), "seed": 0, "kimg": train.get("kimg"),
        "wall_hours": round(float(train["seconds"]) / 3600, 4), "cpu_hours": None,
        "machine": f"one {device.get('name')} (torch {device.get('torch')}, {run.get('created_utc')})",
        "gpu_hours": round(float(train["seconds"]) / 3600, 4),
        "params": {"model": train.get("model"), "train": {
            k: train.get(k) for k in ("start_resolution", "batch_sizes", "fade_kimg", "stab_kimg", "amp",
                                      "channels_last", "r1_interval")} | {"lr": run.get("settings", {}).get(
                                          "train_lr")}},
        "fd_effnet_on_device": train.get("fd_effnet"),
    }


def _release(args: argparse.Namespace) -> int:
    from stylegan import pretrained, release
    from stylegan.checkpoint import load_generator
    from stylegan.config import load_params, section
    from stylegan.metrics import evaluate_generator

    check_dir_arg(args.export, "--export")
    cfg = section(load_params(args.params), "evaluate")
    training = _gpu_training_record(args) if args.gpu_record else _training_record(args)
    record = {"description": args.description, "limits": args.limit, "training": training}
    record["kimg"] = record["training"]["kimg"]
    compare = {}
    for item in args.compare:
        label, _, path = item.partition("=")
        if not path:
            raise ValueError(f"--compare {item!r} must look like LABEL=EXPORT_DIR")
        out = Path(args.work) / "compare" / label.replace(" ", "-")
        from dataclasses import replace

        compare[label] = evaluate_generator(load_generator(path), args.data, replace(cfg, pokedex=args.pokedex),
                                            out, out / "reports", log=lambda _: None)
    if compare:
        record["compare"] = compare
    root = Path(args.root) if args.root else pretrained.ROOT
    dest = release.package(args.export, args.name, pokedex_dir=args.pokedex, data_root=args.data, eval_cfg=cfg,
                           record=record, root=root)
    print(f"wrote {dest} and {root / pretrained.INDEX_NAME}; sample it with "
          f"`pokegan sample --model pretrained:{args.name} --seeds 0-15 --explain`", flush=True)
    return 0


def add_release(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="package an export as a shipped model: pretrained/NAME/ (fp16 weights, "
                       "Pokédex, metrics, model card) and its sha256s in pretrained/index.json")
    p.add_argument("--export", required=True, help="the export folder (pokegan train --export DIR)")
    p.add_argument("--name", required=True, help="the shipped model's name: pretrained:NAME")
    p.add_argument("--pokedex", default="models/pokedex", help="the Pokédex that names its samples")
    p.add_argument("--data", default="data/prepared", help="the prepared sprites the metrics compare with")
    p.add_argument("--params", default="params.yaml", help="params file (the evaluate section: the metrics' protocol)")
    p.add_argument("--profile", default=None, help="the params overlay the model was trained with (for the card)")
    p.add_argument("--run-dir", default=None, help="the training run (its events.jsonl gives the wall time)")
    p.add_argument("--cpu-hours", type=float, default=None, help="CPU hours the training used (for the card)")
    p.add_argument("--machine", default="a 2-core CPU machine", help="what it trained on (for the card)")
    p.add_argument("--command-line", default="bash scripts/release.sh", help="the training command (for the card)")
    p.add_argument("--description", default="", help="one paragraph for the card and for pokegan models")
    p.add_argument("--limit", action="append", default=[], help="a known limit, for the card (repeatable)")
    p.add_argument("--gpu-record", default=None, metavar="GPU_CHECK_JSON",
                   help="the export came from a GPU check's release step: take the training facts (device, "
                   "seconds, kimg, schedule) from its gpu_check-*.json instead of --profile/--run-dir")
    p.add_argument("--commit", default=None, help="the code commit the model was trained with (default: HEAD)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=EXPORT",
                   help="also measure this export with the same protocol, for the card's comparison table")
    p.add_argument("--work", default="runs/release-work", help="scratch folder for the comparisons")
    p.add_argument("--root", default=None, help="the shipped models' folder (default: pretrained/ in the checkout)")
    p.set_defaults(func=_release)
