"""`mmfusion fusions`"""

from __future__ import annotations

import argparse

HELP = "list the registered fusion variants"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    from mmfusion.fusion import FUSIONS, list_fusions

    for name in list_fusions():
        doc = (FUSIONS.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:12s} {doc}")
    return 0
