"""`python -m mmfusion COMMAND`: argument parsing and dispatch only.

Each command is a thin recipe in `mmfusion/commands/<name>.py` that defines `HELP`, `add_arguments(parser)` and
`main(args) -> int`; a new module there is a new command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mmfusion import commands
from mmfusion.errors import UserError


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """`--config X.yaml` plus dotted `key=value` overrides: shared by every command that builds a config."""
    p.add_argument("--config", help="experiment YAML (see experiments/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, values parsed as YAML: model.fusion=gate trainer.max_epochs=2")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmfusion", description="Multimodal (text + tabular) fusion zoo")
    sub = ap.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mmfusion.commands.{info.name}")
        p = sub.add_parser(info.name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmfusion").setLevel(logging.INFO)
    try:
        return args.handler(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
