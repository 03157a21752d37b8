"""pokegan models and pokegan release: the generators that ship with the project."""

from __future__ import annotations

import argparse
import json
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


def _release(args: argparse.Namespace) -> int:
    from stylegan import pretrained, release
    from stylegan.checkpoint import load_generator
    from stylegan.config import load_params, section
    from stylegan.metrics import evaluate_generator

    check_dir_arg(args.export, "--export")
    cfg = section(load_params(args.params), "evaluate")
    if args.gpu_record:
        training = release.gpu_training_record(args.export, args.data, args.gpu_record, commit=args.commit)
    else:
        training = release.training_record(args.export, args.data, params=args.params, profile=args.profile,
                                           run_dir=args.run_dir, command=args.command_line,
                                           cpu_hours=args.cpu_hours, machine=args.machine, commit=args.commit)
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
