"""The inspection report opened in a real browser (headless Chromium from Debian's `chromium` package, which `.ci/run`
installs): its tables and figures are there, every image decodes, and nothing is fetched from outside the page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mmfusion.cli import main as cli
from mmfusion.config import load_config
from mmfusion.jobs.train import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")]

# Appended to a copy of the page: after load, the page reports what the browser made of it into a <pre> element
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {
    tables: document.querySelectorAll('table').length,
    table_rows: document.querySelectorAll('table tr').length,
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40)),
    min_width: Math.min(...imgs.map(i => i.naturalWidth)),
    external: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('data:')),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')).filter(h => !h.startsWith('#')),
  };
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def render(page: Path, tmp: Path) -> dict:
    """What headless Chromium saw in `page`, with every host unreachable (nothing may come from outside)."""
    probe = tmp / f"probed_{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>") if "</body>" in page.read_text() else page.read_text() + PROBE)
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not load in Chromium; DOM starts: {dom[:300]!r}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


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
