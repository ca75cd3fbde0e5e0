"""Rendering an inspection report: plain text for the terminal, one self-contained HTML page (plots embedded)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from mmfusion.analysis.inspection import Report


def _sections(report: "Report") -> list[tuple[str, pd.DataFrame]]:
    out = [(f"w_text per true class ({report.split})", report.per_class)]
    if report.per_modality is not None:
        out.append((f"w_text per truly informative modality ({report.split})", report.per_modality))
    if report.per_text_column is not None:
        out.append((f"Text columns the samples leaned on: each column's share of the pooled text, per true class ({report.split})", report.per_text_column))
    out += [(f"Samples that leaned most on the text ({report.split})", report.top_text), (f"Samples that leaned most on the table ({report.split})", report.top_tab)]
    return out


def format_text(report: "Report") -> str:
    lines = [f"run {report.run_id}  fusion={report.fusion}"]
    lines += [f"note: {n}" for n in report.notes]
    if report.metrics:
        lines.append("  ".join(f"{k}={v:.4g}" for k, v in report.metrics.items()))
    if report.attribution_auroc is not None:
        lines.append(f"attribution_auroc (w_text vs the truly informative modality) = {report.attribution_auroc:.3f}")
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.max_columns", 20):
        for title, table in _sections(report):
            lines += ["", f"== {title}", table.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{color:#a40}"""


def to_html(report: "Report") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmfusion inspect {report.run_id}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>Modality weights of run {html.escape(report.run_id)}</h1><p>fusion: <b>{html.escape(report.fusion)}</b></p>")
    parts += [f"<p class='note'>note: {html.escape(n)}</p>" for n in report.notes]
    if report.metrics:
        parts.append("<p>" + ", ".join(f"{html.escape(k)} = {v:.4g}" for k, v in report.metrics.items()) + "</p>")
    if report.attribution_auroc is not None:
        parts.append(f"<p><b>attribution_auroc</b> (w_text separating text-informative from table-informative samples; 0.5 = none): {report.attribution_auroc:.3f}</p>")
    for title, table in _sections(report):
        parts.append(f"<h2>{html.escape(title)}</h2>" + table.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0))
    if report.plots:
        parts.append("<h2>Plots</h2>")
        for name, data in report.plots.items():
            parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: "Report", out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    path.write_text(to_html(report), encoding="utf-8")
    return path
