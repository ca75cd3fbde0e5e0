"""Finding the models a run logged: MLflow 3 keeps them as LoggedModel entities, not as the run's artifacts."""

from __future__ import annotations


def logged_model_id(run_id: str, name: str) -> str | None:
    """The id of the LoggedModel called `name` that `run_id` produced; the latest where `export` ran again."""
    import mlflow  # slow to import; scoring alone does not need it

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    models = [client.get_logged_model(out.model_id) for out in (run.outputs.model_outputs if run.outputs else [])]
    named = sorted((m for m in models if m.name == name), key=lambda m: m.creation_timestamp)
    return named[-1].model_id if named else None
