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
import traceback

from mmfusion import commands, progress
from mmfusion.errors import Interrupted, UserError


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """`--config X.yaml` plus dotted `key=value` overrides: shared by every command that builds a config."""
    p.add_argument("--config", help="experiment YAML (see experiments/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, values parsed as YAML: model.fusion=gate trainer.max_epochs=2")


def add_register_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--register", metavar="NAME", help=f"register the {what}'s model under NAME (alias @best) in the MLflow model registry")
    p.add_argument("--alias", action="append", default=[], metavar="ALIAS", help="with --register: also this alias (e.g. champion); repeatable")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmfusion", description="Multimodal (text + tabular) fusion zoo")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or progress lines (results and errors still print)")
    sub = ap.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mmfusion.commands.{info.name}")
        p = sub.add_parser(info.name, help=module.HELP.replace("%", "%%"), description=module.HELP)  # argparse %-formats help
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress.set_quiet(args.quiet)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmfusion").setLevel(logging.INFO)
    # `import lightning` gives its logger a console handler of its own: without this, each of its lines prints twice
    logging.getLogger("lightning").propagate = False
    try:
        return args.handler(args)
    except UserError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM turned into `Interrupted` by the job that owns a run
        interrupted = err if isinstance(err, Interrupted) else Interrupted()
        print(f"error: interrupted by {interrupted} (runs in progress were marked KILLED)", file=sys.stderr)
        return interrupted.exit_code
    except Exception as err:  # a bug, or an input class we do not know yet: one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"error: unexpected {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines)[:2000] or type(err).__name__
