"""`python -m mmfusion COMMAND`: argument parsing and dispatch only; each command is a thin recipe in commands/."""

from __future__ import annotations

import argparse
import logging
import sys

from mmfusion.errors import UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML (see experiments/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, values parsed as YAML: model.fusion=gate trainer.max_epochs=2")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmfusion", description="Multimodal (text + tabular) fusion zoo")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_config_args(sub.add_parser("train", help="train one model and log it to MLflow"))
    _add_config_args(sub.add_parser("config", help="print the fully resolved config"))
    sub.add_parser("fusions", help="list the registered fusion variants")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmfusion").setLevel(logging.INFO)
    try:
        from mmfusion.commands import run_command

        return run_command(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
