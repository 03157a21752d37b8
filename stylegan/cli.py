"""``pokegan``: thin commands over the library (and, lazily, the flows).

Each command lives in its own ``_add_<name>`` function; the library's commands work with
only the library's dependencies installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stylegan import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pokegan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pokegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_ADDERS):
        add(sub)
    return parser


# Each _add_<name>(sub) registers one subcommand with set_defaults(func=handler).
_ADDERS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        # Bad input gets one clear line, not a traceback.
        print(f"pokegan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
