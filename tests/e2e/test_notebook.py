"""The inspection notebook runs against a finished run, with only its parameters cell saying which run of which store."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfusion.config import load_config
from mmfusion.jobs.train import train

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "inspect_modality_weights.ipynb"


@pytest.fixture(scope="module")
def gate_run(tiny_bert, mlflow_module_uri):
    overrides = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=100", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16", "model.tab_hidden=16",
                 "model.tab_dim=16", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.enable_progress_bar=false", "trainer.precision=32-true", "data.cache_dir=null",
                 "model.fusion=gate", "tracking.log_model=false"]
    return train(load_config(None, overrides)), Path.cwd(), mlflow_module_uri


def test_notebook_executes_against_the_run(gate_run, monkeypatch, tmp_path):
    import nbclient
    import nbformat

    result, _, uri = gate_run
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the parameters alone say which run of which store
    nb = nbformat.read(NOTEBOOK, as_version=4)
    [at] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"RUN_ID = {result.run_id!r}\nTRACKING_URI = {uri!r}"))  # as papermill injects them
    # run elsewhere than the store's folder: the default sqlite:///mlflow.db would not find the run
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any failing cell
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run {result.run_id} (FINISHED)" in texts and "'passed': True" in texts
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 6  # two drawn from the predictions, four logged by the run
