"""The inspection report opened in a real browser (headless Chromium from Debian's `chromium` package, which `.ci/run`
installs): its tables and figures are there, every image decodes, and nothing is fetched from outside the page."""

from __future__ import annotations


import pytest

from browser import needs_chromium, render

from mmfusion.cli import main as cli
from mmfusion.config import load_config
from mmfusion.jobs.train import train

pytestmark = [pytest.mark.slow, needs_chromium]


def test_report_renders_with_tables_and_images(tiny_bert, mlflow_uri, tmp_path):
    overrides = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=100", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16",
                 "model.tab_hidden=16", "model.tab_dim=16", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.enable_progress_bar=false",
                 "trainer.precision=32-true", "data.cache_dir=null", "model.fusion=moe", "tracking.log_model=false", "export.onnx=false"]
    run_id = train(load_config(None, overrides)).run_id
    assert cli(["inspect", "--run-id", run_id, "--top", "3", "--output", str(tmp_path / "report"), "--no-log"]) == 0
    seen = render(tmp_path / "report" / "report.html", tmp_path)
    assert seen["tables"] >= 3 and seen["table_rows"] >= 3 + 3 + 2  # top-text, top-tab and per-class tables with rows
    assert seen["images"] >= 2 and seen["broken"] == [] and seen["min_width"] > 100
    assert seen["external"] == [] and seen["links"] == []


def test_probe_sees_a_broken_image(tmp_path):
    """The check itself can fail: an image that does not decode is reported."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><table><tr><td>x</td></tr></table><img alt='bad' src='data:image/png;base64,AAAA'>"
                    "<img alt='remote' src='https://example.invalid/x.png'></body></html>")
    seen = render(page, tmp_path)
    assert seen["broken"] == ["bad", "remote"] and seen["external"] == ["https://example.invalid/x.png"]
