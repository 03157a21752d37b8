"""Options and checks several commands share: fail before any work, with the flag that is wrong."""

from __future__ import annotations

import argparse
from pathlib import Path


def int_at_least(low: int) -> object:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def check_dir_arg(path: str | Path, flag: str) -> None:
    """``flag`` names a folder to write into: it (and every parent that exists) must be a folder."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path}: {p} is a file, not a folder; pass a folder path")


def check_file_arg(path: str | Path, flag: str, example: str) -> None:
    """``flag`` names a file to write: not an existing folder, and its parents must be folders."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file path such as {path / example}")
    check_dir_arg(path.parent, flag)


def model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", "--network", dest="model", required=required,
                   help="export folder, generator.safetensors, pretrained:NAME (see: pokegan models), "
                        "models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (CUDA when present)")


def psi_options(p: argparse.ArgumentParser, default: float = 0.7) -> None:
    p.add_argument("--psi", "--trunc", dest="psi", type=float, default=default,
                   help="truncation psi (1 = none, 0 = the average w)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const",
                   help="noise inputs: the stored maps, fresh draws, or none")


def check_psi(psi: float) -> None:
    if not 0.0 <= psi <= 1.0:  # also rejects nan
        raise ValueError(f"--psi must be in [0, 1] (1 = no truncation, 0 = the average w), got {psi}")


def threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch CPU threads (default: one per core; 1 is far faster on a busy machine)")


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
