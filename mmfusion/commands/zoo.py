"""`mmfusion zoo --config experiments/zoo.yaml [--seeds K] [--variants a,b] [--out DIR] [key=value ...]`"""

from __future__ import annotations

import argparse

from mmfusion.cli import add_config_arguments, add_register_arguments
from mmfusion.tracking.contract import Tag

HELP = "train every fusion variant of a zoo config for the same seeds, data and budget, then compare them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--seeds", help="K: seeds 0..K-1, or a comma list (3,7,11); overrides zoo.seeds")
    p.add_argument("--variants", help="comma list of variant labels to run (default: all of zoo.variants)")
    p.add_argument("--out", help="folder for the comparison (default: <trainer.output_dir>/zoo-<parent id>)")
    p.add_argument("--resume", metavar="PARENT_RUN_ID", help="continue a zoo: its finished members are kept, the rest trained")
    p.add_argument("--no-compare", action="store_true", help="train only; run `mmfusion compare --parent ID` later")
    add_register_arguments(p, "best member (by the zoo's first metric)")


def parse_seeds(text: str | None) -> list[int] | None:
    from mmfusion.errors import ConfigError

    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count K (seeds 0..K-1) or a comma list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: need at least one seed and no repeats")
    return seeds


def _check_parent(cfg, run_id: str) -> None:
    """--resume names a zoo's parent run in this store (before anything starts)."""
    import mlflow

    from mmfusion.tracking.artifacts import get_run
    from mmfusion.errors import UserError
    from mmfusion.tracking.contract import tracking_uri

    run = get_run(run_id, mlflow.MlflowClient(tracking_uri(cfg)))
    if run.data.tags.get(Tag.KIND) != "zoo":
        raise UserError(f"--resume {run_id}: not a zoo's parent run (its tag mmfusion.kind is {run.data.tags.get('mmfusion.kind')!r}, not 'zoo')")


def main(args: argparse.Namespace) -> int:
    from mmfusion.config import load_config
    from mmfusion.training.hardware import describe
    from mmfusion.jobs.zoo import members, run_zoo

    cfg = load_config(args.config, args.overrides)
    seeds = parse_seeds(args.seeds)
    if args.register:
        from mmfusion.tracking.registry import check_aliases, check_name

        check_name(args.register, "--register")
        check_aliases(args.alias)
    if args.out:
        from mmfusion.paths import check_output_dir

        check_output_dir(args.out, "--out")
    if args.resume:
        _check_parent(cfg, args.resume)
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    todo = members(cfg, seeds, only)  # every member's config is validated before anything runs
    labels = list(dict.fromkeys(m.label for m in todo))
    print(f"mmfusion zoo: {len(labels)} variant(s) x {len(todo) // max(1, len(labels))} seed(s) = {len(todo)} runs | {describe()}")
    print("variants: " + ", ".join(labels))
    result = run_zoo(cfg, seeds=seeds, only=only, out_dir=args.out, resume=args.resume, compare=not args.no_compare)
    print(f"parent run {result.parent_run_id}")
    if result.comparison is not None:
        from mmfusion.analysis.compare import to_markdown

        print(to_markdown(result.comparison))
        print(f"written to {result.out_dir} and logged to the parent run under comparison/")
    if args.register:
        from mmfusion.config import ZooConfig
        from mmfusion.jobs.register import best_member, register_best
        from mmfusion.tracking.contract import tracking_uri

        uri = tracking_uri(cfg)
        best = best_member(result.run_ids, (cfg.zoo or ZooConfig()).metrics[0], uri)
        version = register_best(best, args.register, tuple(args.alias), uri=uri, parent_run_id=result.parent_run_id)
        print(f"registered the best member (run {best}) as models:/{args.register}/{version.version} (@best{''.join(' @' + a for a in args.alias)})")
    return 0
