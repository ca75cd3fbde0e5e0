"""The MLflow model registry: a run's model under a stable name with aliases (`@best`, `@champion`), and a
`models:/NAME@ALIAS` (or `models:/NAME/VERSION`) URI resolved back to the run that logged it.

A version registers the run's pyfunc model (PyTorch bundle) and records its ONNX sibling in the version tag
`mmfusion.onnx_model_id`. Serving by name goes through the run (`resolve_run`), so every integrity check that scoring
a run does (bundle sha256, ONNX metadata) applies to a registered model too.
"""

from __future__ import annotations

import re

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mmfusion.errors import UserError
from mmfusion.serving.logged_models import logged_model_id
from mmfusion.serving.onnx_scorer import ONNX_MODEL_NAME
from mmfusion.tracking.contract import Artifact, Tag, model_name_problem

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_name(name: str, what: str = "registered model name") -> str:
    problem = model_name_problem(name)
    if problem:
        raise UserError(f"{what} {name!r} {problem}")
    return name


def check_aliases(aliases) -> None:
    for alias in aliases:
        if not ALIAS.match(alias) or re.fullmatch(r"v\d+", alias):
            raise UserError(f"alias {alias!r} must start with a letter and hold letters, digits, '_' or '-' (not v<number>)")


def register(run_id: str, name: str, aliases: tuple[str, ...] = ("best",), client: mlflow.MlflowClient | None = None) -> ModelVersion:
    """A new version of `name` from the run's pyfunc model, with `aliases` moved onto it."""
    client = client or mlflow.MlflowClient()
    check_name(name)
    check_aliases(aliases)
    model_id = logged_model_id(run_id, Artifact.MODEL)
    if model_id is None:
        raise UserError(f"run {run_id} logged no model to register as {name!r} (it ran with tracking.log_model=false)")
    onnx_id = logged_model_id(run_id, ONNX_MODEL_NAME)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="mmfusion: text + tabular fusion classifier (pyfunc; ONNX sibling in the version tag mmfusion.onnx_model_id)")
    version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags={Tag.ONNX_MODEL_ID: onnx_id or "none"})
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def resolve_run(uri: str, client: mlflow.MlflowClient | None = None) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the id of the run that logged that version."""
    client = client or mlflow.MlflowClient()
    m = MODELS_URI.match(uri)
    if not m:
        raise UserError(f"--model {uri!r} is not a registered model URI: models:/NAME@ALIAS or models:/NAME/VERSION")
    name = m["name"]
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(r.name for r in client.search_registered_models(max_results=100))
        raise UserError(f"no registered model {name!r} at {mlflow.get_tracking_uri()}; registered: {', '.join(known) or 'none'}") from None
    try:
        version = client.get_model_version_by_alias(name, m["alias"]) if m["alias"] else client.get_model_version(name, m["version"])
    except MlflowException:
        model = client.get_registered_model(name)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise UserError(f"registered model {name!r} has no {'alias ' + repr(m['alias']) if m['alias'] else 'version ' + m['version']}; "
                        f"aliases: {', '.join(sorted(model.aliases)) or 'none'}; versions: {', '.join(map(str, versions)) or 'none'}") from None
    if not version.run_id:
        raise UserError(f"{uri}: version {version.version} was not registered from an mmfusion run (no run id)")
    return version.run_id
