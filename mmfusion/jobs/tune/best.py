"""The end of a study of lean trials: the best trial's plots (and its model and ONNX export, as its config asks),
logged once. From the fitted model this process kept when the best trial is its own; otherwise (a trial of another
worker or of an earlier invocation) by training the best config once more, nested under the parent
(`jobs.register.retrain`, tag mmfusion.retrain_of). The parent's tag mmfusion.best_outputs_run_id names the run
that holds them (the parent itself, or the retrain)."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from mmfusion.config import Config
from mmfusion.encoders import load_tokenizer
from mmfusion.jobs.outputs import full_tables, log_model_outputs
from mmfusion.jobs.register import retrain
from mmfusion.tracking.contract import Tag

log = logging.getLogger(__name__)


def log_best_outputs(client: MlflowClient, study: optuna.Study, parent_id: str, kept: tuple[int, Config, Any] | None, uri: str) -> str | None:
    """-> the run now holding the best lean trial's outputs; None when there is nothing to do (no complete trial, the
    best trial's run is a full one, or this best's outputs were logged before)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    run_id = best.user_attrs.get("mlflow_run_id")
    if not run_id or client.get_run(run_id).data.tags.get(Tag.LEAN) != "true":
        return None
    parent = client.get_run(parent_id)
    if parent.data.tags.get(Tag.BEST_OUTPUTS_OF) == run_id:
        return parent.data.tags.get(Tag.BEST_OUTPUTS)
    if kept is not None and kept[0] == best.number:
        _, cfg, result = kept
        tokenizer = load_tokenizer(cfg.model.text_encoder)
        active = mlflow.active_run()
        assert active is not None and active.info.run_id == parent_id, "the study's parent run must be the active run"
        log_model_outputs(cfg, result.module, full_tables(cfg, result.module, result.data, tokenizer.pad_token_id or 0), result.data, tokenizer)
        holder = parent_id
        log.info("best trial #%d: its plots%s logged into the parent run from the model kept in memory", best.number, " and model" if cfg.tracking.log_model else "")
    else:
        log.info("best trial #%d ran elsewhere: training its config once more for its plots and model", best.number)
        holder = retrain(run_id, uri=uri, parent_run_id=parent_id, run_name=f"{study.study_name}-best", with_model=False)
    client.set_tag(parent_id, Tag.BEST_OUTPUTS, holder)
    client.set_tag(parent_id, Tag.BEST_OUTPUTS_OF, run_id)
    return holder
