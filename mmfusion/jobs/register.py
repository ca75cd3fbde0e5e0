"""`tune` / `zoo --register NAME`: give the best run of a study or a zoo a stable name in the model registry.

Trials and zoo members usually skip packaging a model (`tracking.log_model: false`): then the best run's recorded
config is trained once more with its model and ONNX export, nested under the same parent (tag
`mmfusion.retrain_of`), and that run is registered. Training is deterministic, so it is the same model.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.entities.model_registry import ModelVersion

from mmfusion.jobs.train import train
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.tracking.contract import Artifact, Tag, use_store
from mmfusion.tracking.registry import register
from mmfusion.tracking.runs import config_of_run

log = logging.getLogger(__name__)


def retrain(run_id: str, *, uri: str, parent_run_id: str | None, run_name: str, with_model: bool) -> str:
    """Train `run_id`'s recorded config once more as a full run (plots; `with_model`: also its model and ONNX export),
    nested under `parent_run_id`, tagged `mmfusion.retrain_of`. -> the new run's id."""
    cfg = config_of_run(run_id, client=mlflow.MlflowClient(use_store(uri)))
    tracking = {"register_as": None, "run_name": run_name, **({"log_model": True} if with_model else {})}
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update=tracking),
                                 "export": cfg.export.model_copy(update={"onnx": True}) if with_model else cfg.export})
    return train(cfg, parent_run_id=parent_run_id, extra_tags={Tag.RETRAIN_OF: run_id}, tracking_uri=uri).run_id


def register_best(run_id: str, name: str, aliases: tuple[str, ...], *, uri: str, parent_run_id: str | None, candidates: tuple[str, ...] = ()) -> ModelVersion:
    """Register `run_id`'s model (or, without one, that of a retrain of it among `candidates`, or else its config trained
    again with one) as `name`, aliases @best + `aliases`."""
    client = mlflow.MlflowClient(use_store(uri))
    if logged_model_id(run_id, Artifact.MODEL) is None:
        ready = [c for c in candidates if client.get_run(c).data.tags.get(Tag.RETRAIN_OF) == run_id and logged_model_id(c, Artifact.MODEL)]
        if ready:
            run_id = ready[0]
        else:
            log.info("run %s logged no model: training its config again with one, to register it as %r", run_id, name)
            run_id = retrain(run_id, uri=uri, parent_run_id=parent_run_id, run_name=f"{name}-best", with_model=True)
    return register(run_id, name, ("best", *aliases), client)


def best_member(run_ids: list[str], metric: str, uri: str) -> str:
    """The zoo member with the best value of `metric` (lower is better only for losses)."""
    client = mlflow.MlflowClient(uri)
    values = {rid: client.get_run(rid).data.metrics.get(metric) for rid in run_ids}
    scored = {rid: v for rid, v in values.items() if v is not None}
    if not scored:
        raise ValueError(f"no zoo member logged {metric}")
    pick = min if metric.endswith("loss") else max
    return pick(scored, key=scored.get)
