"""The MLflow run contract: every tag and artifact name a run records, the modality codes, and where runs go.

Writers and readers (training, tuning, zoo, reproduce, compare, inspect, serving) import the names from here, so a
name is spelled once. Only this module sets process-wide MLflow state (`use_store`); the rest passes URIs around.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmfusion.config import Config

DEFAULT_URI = "sqlite:///mlflow.db"


class Tag:
    """Run tags (all strings in MLflow)."""

    FUSION = "mmfusion.fusion"
    GIT_SHA = "mmfusion.git_sha"
    DATA_FINGERPRINT = "mmfusion.data_fingerprint"
    JOB_DIR = "mmfusion.job_dir"
    STRATEGY = "mmfusion.strategy"
    WORLD_SIZE = "mmfusion.world_size"
    KIND = "mmfusion.kind"  # "zoo" | "study" parent runs
    ROLE = "mmfusion.role"
    # who owns a RUNNING run (`runs --stale`), and how a run ended
    HOST, PID, HEARTBEAT = "mmfusion.host", "mmfusion.pid", "mmfusion.heartbeat"
    ERROR, STOPPED_BY, KILLED_REASON = "mmfusion.error", "mmfusion.stopped_by", "mmfusion.killed_reason"
    # studies
    STUDY, STORAGE = "mmfusion.study", "mmfusion.storage"
    TRIAL_NUMBER, TRIAL_PARAMS, PRUNED = "mmfusion.trial_number", "mmfusion.trial_params", "mmfusion.pruned"
    BEST_RUN_ID, BEST_RUN_URI = "mmfusion.best_run_id", "mmfusion.best_run_uri"
    BEST_TRIAL, BEST_VALUE = "mmfusion.best_trial", "mmfusion.best_value"
    # zoo
    ZOO_LABEL, ZOO_SEED = "mmfusion.zoo.label", "mmfusion.zoo.seed"
    ZOO_PARENT, ZOO_MEMBERS = "mmfusion.zoo.parent", "mmfusion.zoo.members"
    # reproduce / compare
    REPRODUCES = "mmfusion.reproduces"
    REPRODUCTION_MAX_DIFF = "mmfusion.reproduction.max_metric_diff"
    COMPARED_RUNS = "mmfusion.compared_runs"
    # integrity of served files
    BUNDLE_SHA256 = "mmfusion.bundle_sha256"  # JSON {relative path: sha256} of the logged bundle
    PREPROCESSING_SHA256 = "mmfusion.preprocessing_sha256"
    # on registered model versions: the run and its ONNX sibling (the same weights, served without torch)
    ONNX_MODEL_ID = "mmfusion.onnx_model_id"
    RETRAIN_OF = "mmfusion.retrain_of"  # a best run trained again with its model, to be registered


class Artifact:
    """Artifact paths inside a run."""

    CONFIG = "config.yaml"  # the resolved config: enough to rebuild the run
    PREPROCESSING = "preprocessing.json"
    ENVIRONMENT = "environment.json"  # library versions
    PREDICTIONS_DIR = "predictions"  # <split>.csv: one row per sample (see `predictions_path`)
    ROUTER_PLOT = "plots/router_weights.png"
    REPRODUCTION = "reproduction.json"
    MODEL = "model"  # the pyfunc model's name
    # the ONNX export: LoggedModels (not "onnx", which MLflow would list inside onnx/) and the files under onnx/
    ONNX_MODEL, ONNX_INT8_MODEL = "model_onnx", "model_onnx_int8"
    ONNX_META, ONNX_PARITY, ONNX_INT8 = "onnx_meta.json", "onnx_parity.json", "onnx_int8.json"
    ONNX_TOKENIZER = "tokenizer"
    # the packed export: the LoggedModel's model.onnx is the chunk-encoder graph, the fusion + head graph rides along
    # as an MLflow extra file (runs exported before it hold one whole-model graph as model.onnx and no head)
    ONNX_HEAD = "extra_files/head.onnx"


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot name a registered model (None: it can): MLflow URIs split on '/', '@' and ':'."""
    if not name or not name.strip() or any(c in name for c in "/@:") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must be non-empty, without '/', '@', ':' or control characters"
    return None


def predictions_path(split: str) -> str:
    return f"{Artifact.PREDICTIONS_DIR}/{split}.csv"


# which modality truly carries the label (synthetic data only); -1 where unknown (real data)
MODALITY_CODES = {"tab": 0, "text": 1, "both": 2}
MODALITY_NAMES = {code: name for name, code in MODALITY_CODES.items()}
TAB, TEXT = MODALITY_CODES["tab"], MODALITY_CODES["text"]
UNKNOWN_MODALITY = -1


def tracking_uri(cfg: "Config | None" = None, flag: str | None = None) -> str:
    """Where runs go: a command's `--tracking-uri` flag, then `MLFLOW_TRACKING_URI` (MLflow's own convention), then the
    config's `tracking.uri`, then a SQLite file in the working directory."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or (cfg.tracking.uri if cfg is not None else None) or DEFAULT_URI


def use_store(uri: str) -> str:
    """Point this process's MLflow client at `uri`, quietly (no per-file download bars); the one place that does."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    return uri
