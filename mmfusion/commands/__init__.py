"""Each CLI command is a short recipe over the library pieces."""

from __future__ import annotations

import argparse


def run_command(args: argparse.Namespace) -> int:
    if args.command == "fusions":
        from mmfusion.fusion import FUSIONS, list_fusions

        for name in list_fusions():
            doc = (FUSIONS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {doc}")
        return 0
    if args.command == "config":
        from mmfusion.config import load_config, to_yaml

        print(to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    if args.command == "train":
        from mmfusion.commands.train import main

        return main(args)
    raise AssertionError(args.command)
