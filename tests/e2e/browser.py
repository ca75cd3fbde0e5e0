"""Headless Chromium (Debian's `chromium`) for the e2e tests that open pages: `render(page)` reports what the browser
made of it (tables, images and whether they loaded, any request for something outside the page)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")

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
