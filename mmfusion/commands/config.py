"""`mmfusion config --config X.yaml [key=value ...]`"""

from __future__ import annotations

import argparse

from mmfusion.cli import add_config_arguments

HELP = "print the fully resolved config (defaults + file + overrides)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)


def main(args: argparse.Namespace) -> int:
    from mmfusion.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
