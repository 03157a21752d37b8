"""pokegan profile: apply a params overlay (the command itself lives in stylegan.profile)."""

from __future__ import annotations

import argparse


def add_profile(sub: argparse._SubParsersAction) -> None:
    from stylegan import profile  # config only: no torch at parser build time

    p = sub.add_parser("profile", help="apply a params overlay such as params-gpu.yaml: print the -S overrides "
                       "for dvc exp run $(pokegan profile params-gpu.yaml), or --write params.yaml")
    profile.add_arguments(p)
    p.set_defaults(func=profile.run)
