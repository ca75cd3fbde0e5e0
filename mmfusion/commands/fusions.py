"""`mmfusion fusions`"""

from __future__ import annotations

import argparse

HELP = "list the registered fusion variants, their options (defaults) and presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    from mmfusion.fusion import FUSIONS, list_fusions

    for name in list_fusions():
        variant = FUSIONS.get(name)
        doc = (variant.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}")
        options = ", ".join(f"{k}={f.default}" for k, f in variant.Options.model_fields.items())
        if options:
            print(f"{'':14s}   options (model.fusion_options): {options}")
        for preset, values in variant.presets.items():
            print(f"{'':14s}   preset {preset}: {', '.join(f'{k}={v}' for k, v in values.items())}")
    return 0
