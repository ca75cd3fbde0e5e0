"""The training core: `fit` (Lightning trainer, no MLflow), its callbacks and hardware/precision choices."""
