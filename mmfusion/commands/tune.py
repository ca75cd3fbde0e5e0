"""`mmfusion tune --config experiments/study_quickstart.yaml [key=value ...]`"""

from __future__ import annotations

import argparse
import logging

from mmfusion.cli import add_config_arguments, add_register_arguments

HELP = "run, resume or join an Optuna study whose trials are train runs (config section `study`)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_register_arguments(p, "best trial")


def main(args: argparse.Namespace) -> int:
    from mmfusion.config import load_config
    from mmfusion.errors import ConfigError
    from mmfusion.training.hardware import describe

    cfg = load_config(args.config, args.overrides)  # config and search-space errors surface here, before any trial
    if args.register:
        from mmfusion.tracking.registry import check_aliases, check_name

        check_name(args.register, "--register")
        check_aliases(args.alias)
    if cfg.study is None:
        raise ConfigError(f"{args.config or 'the config'} has no `study` section (see experiments/study_quickstart.yaml)")
    from mmfusion.jobs.tune import DEFAULT_STORAGE, run_study, safe_url

    import optuna

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one line per trial (Optuna's) instead of Lightning's banner
    optuna.logging.set_verbosity(optuna.logging.INFO)
    sc = cfg.study
    print(f"mmfusion tune: study {sc.study_name!r} in {safe_url(sc.storage or DEFAULT_STORAGE)}, {sc.direction} {sc.metric}, "
          f"n_trials={sc.n_trials} timeout={sc.timeout} max_failed_trials={sc.max_failed_trials} | {describe()}", flush=True)
    res = run_study(cfg)
    study = res.study
    states = {s.name: n for s in optuna.trial.TrialState if (n := len(study.get_trials(deepcopy=False, states=(s,))))}
    print(f"\nstudy {study.study_name!r}: {states} in {res.seconds:.1f} s; MLflow parent run {res.parent_run_id}")
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        print(f"  #{t.number:<3} {t.state.name:<8} {value:>7}  {t.params}")
    if res.best is None:
        print("no trial completed")
        return 0
    b = res.best
    print(f"best trial #{b.number}: {sc.metric} = {b.value:.4f} {b.params}\n  MLflow run {b.user_attrs.get('mlflow_run_id')} (tag mmfusion.best_run_id on the parent run)")
    if args.register and b.user_attrs.get("mlflow_run_id"):
        import mlflow

        from mmfusion.jobs.register import register_best
        from mmfusion.tracking.contract import Tag, tracking_uri

        uri = tracking_uri(cfg)
        outputs = mlflow.MlflowClient(uri).get_run(res.parent_run_id).data.tags.get(Tag.BEST_OUTPUTS)  # a retrain of a lean best trial
        version = register_best(b.user_attrs["mlflow_run_id"], args.register, tuple(args.alias), uri=uri, parent_run_id=res.parent_run_id,
                                candidates=(outputs,) if outputs else ())
        print(f"registered as models:/{args.register}/{version.version} (@best{''.join(' @' + a for a in args.alias)}), run {version.run_id}")
    return 0
