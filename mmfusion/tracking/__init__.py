"""The MLflow run contract: tag and artifact names, URIs, starting/ending runs, and reading runs back."""
