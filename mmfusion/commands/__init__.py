"""CLI commands, one module each (discovered by `mmfusion.cli`). Keep imports of heavy libraries inside `main`."""
