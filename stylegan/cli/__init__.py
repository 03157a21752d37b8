"""pokegan: thin commands over the library (and, lazily, the flows).

One module per command group, each with an ``add_<name>(sub)`` per command that registers it
with ``set_defaults(func=handler)``: ``data`` (fetch, prepare), ``train``, ``evaluate``,
``sample`` (sample, mix, video), ``project``, ``studio``, ``pretrained`` (models, release),
``pokedex``, ``profile``. ``options`` holds the
options and checks they share; ``models`` loads the generator a command names and is the only
module that reaches into ``flows`` (lazily). The library's commands work with only the
library's dependencies installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stylegan import __version__
from stylegan.cli.data import add_fetch, add_prepare
from stylegan.cli.evaluate import add_evaluate
from stylegan.cli.pokedex import add_pokedex
from stylegan.cli.pretrained import add_models, add_release
from stylegan.cli.profile import add_profile
from stylegan.cli.project import add_project
from stylegan.cli.sample import add_mix, add_sample, add_video
from stylegan.cli.studio import add_studio
from stylegan.cli.train import add_train
from stylegan.shared import PipelineMissing

__all__ = ["build_parser", "main", "seed_filename"]


def __getattr__(name: str) -> object:
    """``stylegan.cli.seed_filename``: the library's (``stylegan.sampling``), imported only when asked
    for, so building the parser imports no torch."""
    if name == "seed_filename":
        from stylegan.sampling import seed_filename

        return seed_filename
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _HelpFormatter(argparse.HelpFormatter):
    """Plain help that shows each option's default (when it has a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "(default" not in text
            and action.option_strings
            and default not in (None, False, [], argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction)
        ):
            text += " (default: %(default)s)"
        return text


# The commands in `pokegan --help` order: each adder registers one subcommand.
_ADDERS: list = [add_train, add_sample, add_evaluate, add_mix, add_video, add_project, add_studio, add_models,
                 add_release, add_fetch, add_prepare, add_pokedex, add_profile]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pokegan", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pokegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _ADDERS:
        add(sub)
    for name, p in sub.choices.items():
        p.formatter_class = _HelpFormatter
        if p.description is None:  # `pokegan X --help` starts with what X does
            p.description = next((a.help for a in sub._choices_actions if a.dest == name), None)
    return parser


def _rank_prefix() -> str:
    """``[rank R] `` inside one of several torchrun workers (whose errors interleave), else empty."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"[rank {os.environ['RANK']}] "
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc-per-node N` hands the same command to torchrun's workers
    import warnings

    # Warnings (a skipped corrupt checkpoint, ...) as one line each, not with a source line.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_, **__: f"pokegan {args.command}: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError, PipelineMissing) as exc:
        # Bad input (OSError: a path that is a file, a full disk, no permission) gets one clear line, not a traceback.
        print(f"pokegan {args.command}: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning
