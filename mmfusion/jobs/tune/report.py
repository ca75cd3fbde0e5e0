"""What a study's parent MLflow run records: its settings (storage password redacted), the best trial, plots."""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from optuna.trial import FrozenTrial, TrialState

from mmfusion.config import Config, StudyConfig, flatten, to_yaml
from mmfusion.tracking.session import git_sha
from mmfusion.jobs.tune.storage import DEFAULT_STORAGE, count, safe_url
from mmfusion.tracking.contract import Tag

log = logging.getLogger(__name__)


def redacted(cfg: Config) -> Config:
    """The config with `study.storage`'s password as `***`: what the parent run logs (a re-run supplies the real URL,
    or PostgreSQL reads the password from PGPASSWORD / ~/.pgpass)."""
    out = cfg.model_copy(deep=True)
    if out.study is not None and out.study.storage:
        out.study.storage = safe_url(out.study.storage)
    return out


def parent_tags(sc: StudyConfig) -> dict[str, str]:
    return {Tag.STUDY: sc.study_name, Tag.ROLE: "study", Tag.STORAGE: safe_url(sc.storage or DEFAULT_STORAGE), Tag.GIT_SHA: git_sha()}


def study_params(sc: StudyConfig) -> dict[str, Any]:
    """`study.*` settings, one param per search-space entry (its spec as JSON)."""
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) or v is None else v for k, v in flatten(sc.model_dump(mode="json", exclude={"search_space"}), "study.").items()}
    params.update({f"study.search_space.{k}": json.dumps(v.model_dump(mode="json", exclude_defaults=True)) for k, v in sc.search_space.items()})
    return params


def log_study_setup(cfg: Config) -> None:
    """Into the active (parent) run: the `study.*` params and study_config.yaml (base config + study: this file re-runs
    the study), both with the storage password redacted."""
    shown = redacted(cfg)
    mlflow.log_params(study_params(shown.study))
    mlflow.log_text(to_yaml(shown), "study_config.yaml")


class ParentLog:
    """After every trial: the trial's value and the best so far on the parent run."""

    def __init__(self, client: MlflowClient, parent_id: str) -> None:
        self.client, self.parent_id = client, parent_id

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.client.log_metric(self.parent_id, "trial_value", trial.value, step=trial.number)
        log_best(self.client, study, self.parent_id, step=trial.number)


def log_best(client: MlflowClient, study: optuna.Study, parent_id: str, step: int = 0) -> FrozenTrial | None:
    """Counts, best value, best params (`best.<key>` tags) and a link to the best trial's run."""
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        client.log_metric(parent_id, f"n_{state.name.lower()}", count(study, (state,)), step=step)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = study.best_trial
    run_id = best.user_attrs.get("mlflow_run_id")
    parent = client.get_run(parent_id)
    client.log_metric(parent_id, "best_value", best.value, step=step)
    for key in [k for k in parent.data.tags if k.startswith("best.") and k[5:] not in best.params]:
        client.delete_tag(parent_id, key)  # a conditional parameter of an earlier best
    tags = {Tag.BEST_TRIAL: str(best.number), Tag.BEST_VALUE: f"{best.value:.6g}", **{f"best.{k}": str(v) for k, v in best.params.items()}}
    link = ""
    if run_id:
        tags.update({Tag.BEST_RUN_ID: run_id, Tag.BEST_RUN_URI: f"runs:/{run_id}"})
        link = f", run [{run_id}](#/experiments/{parent.info.experiment_id}/runs/{run_id})"
    tags[MLFLOW_RUN_NOTE] = (f"Best trial **#{best.number}** of study `{study.study_name}`: {study.direction.name.lower()}d value "
                             f"{best.value:.4f}{link}\n\nParams: `{json.dumps(best.params)}`")
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    return best


def log_plots(client: MlflowClient, study: optuna.Study, parent_id: str) -> list[str]:
    """Optuna's optimization history, parameter importances and parallel coordinates as images. -> logged paths."""
    from optuna.visualization import matplotlib as ovm

    logged = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history), ("param_importances", ovm.plot_param_importances), ("parallel_coordinates", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # a flat axis when all trials share a value
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            client.log_figure(parent_id, fig, f"plots/{name}.png")
            logged.append(f"plots/{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances need 2+ complete trials
            log.warning("study plot %s skipped: %s", name, err)
        finally:
            plt.close("all")
    return logged
