"""The inspection notebook executed against a tiny run, exported to one self-contained HTML file with nbconvert, and
opened in headless Chromium the way tests/e2e/test_report_browser.py opens report.html: its figures are images that
decode, its tables are there, and the page fetches nothing from outside itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser import needs_chromium, render

from mmfusion.config import load_config
from mmfusion.jobs.train import train


ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "inspect_modality_weights.ipynb"


pytestmark = [pytest.mark.slow, needs_chromium]

# nbconvert's lab template loads require.js and MathJax from a CDN, and Mermaid too when a cell draws a diagram; the
# notebook needs none of them (no widgets, math or diagrams), so the export drops those script blocks and the page is
# one file that works offline
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
# a remote resource the page could load: src=/href= or a dynamic import( of an http(s) or protocol-relative URL
REMOTE = re.compile(r"""(?:\b(?:src|href)\s*=\s*|import\(\s*)["']?(?:https?:)?//""", re.I)


def export_html(nb, folder: Path) -> Path:
    from nbconvert import HTMLExporter

    (folder / "offline.html.j2").write_text(OFFLINE_TEMPLATE)
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2", extra_template_basedirs=[str(folder)],
                            extra_template_paths=[str(folder)], embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": NOTEBOOK.stem}})
    page = folder / f"{NOTEBOOK.stem}.html"
    page.write_text(body)
    return page


def test_notebook_html_renders_with_tables_and_images(tiny_bert, mlflow_uri, monkeypatch, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert", reason="nbconvert exports the executed notebook to HTML")

    overrides = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=100", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16",
                 "model.tab_hidden=16", "model.tab_dim=16", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.enable_progress_bar=false",
                 "trainer.precision=32-true", "data.cache_dir=null", "model.fusion=gate", "tracking.log_model=false", "export.onnx=false"]
    run_id = train(load_config(None, overrides)).run_id
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the parameters alone say which run of which store

    nb = nbformat.read(NOTEBOOK, as_version=4)
    [at] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"RUN_ID = {run_id!r}\nTRACKING_URI = {mlflow_uri!r}"))  # as papermill injects them
    work = tmp_path / "nb"
    work.mkdir()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()  # raises on a failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    tables = sum("<table" in o.get("data", {}).get("text/html", "") for o in outputs)
    assert figures == 6  # two drawn from the predictions, four logged by a gate run
    assert tables == 6  # metrics, predictions head, per class, per modality, top text, top table (no ONNX in this run)

    page = export_html(nb, tmp_path)
    html = page.read_text()
    assert REMOTE.findall(html) == [] and len(re.findall(r"<img\b[^>]*\bsrc=\"data:image/png;base64,", html)) == figures  # figures inlined, no CDN script
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I)
    assert [s for s in scripts if re.search(r"https?://", s)] == []  # nor a script that would load one later
    seen = render(page, tmp_path)
    assert seen["images"] == figures and seen["broken"] == [] and seen["min_width"] > 100
    assert seen["tables"] == tables and seen["table_rows"] >= 6 + 5 + 2 + 2 + 5 + 5  # each table with its rows
    assert seen["external"] == []  # nothing requested but the page itself
    assert [h for h in seen["links"] if not h.startswith("data:")] == []
