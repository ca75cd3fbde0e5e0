"""`mmfusion train --config X.yaml [key=value ...]`"""

from __future__ import annotations

import argparse

from mmfusion.cli import add_config_arguments

HELP = "train one model and log it to MLflow"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)


def main(args: argparse.Namespace) -> int:
    from mmfusion.config import load_config
    from mmfusion.hardware import describe

    cfg = load_config(args.config, args.overrides)  # all config errors surface here, before anything runs
    from mmfusion.training import train

    print(f"mmfusion train: fusion={cfg.model.fusion} encoder={cfg.model.text_encoder} | {describe()}")
    result = train(cfg)
    shown = {k: round(v, 4) for k, v in sorted(result.metrics.items()) if k.startswith(("val_", "test_"))}
    print(f"run {result.run_id}: {shown}")
    return 0
