"""Inspecting modality weights: the plots a run logs, `mmfusion inspect` on a run read back from a temporary MLflow
store, and the notebook executed top to bottom against that run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mmfusion.cli import main as cli
from mmfusion.config import load_config
from mmfusion.data.tabular import TabularPreprocessor
from mmfusion.analysis.inspection import build_report, fusion_diagnostics, strongest_tabular, weight_figures
from mmfusion.analysis.plots import plt
from mmfusion.jobs.train import train



@pytest.fixture(scope="module")
def gate_run(tiny_bert, mlflow_module_uri):
    overrides = [f"model.text_encoder={tiny_bert}", "data.synthetic.n_samples=100", "data.max_chunks=4", "data.chunk_len=24", "model.fusion_dim=16", "model.tab_hidden=16",
                 "model.tab_dim=16", "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.enable_progress_bar=false", "trainer.precision=32-true", "data.cache_dir=null",
                 "model.fusion=gate", "tracking.log_model=false"]
    return train(load_config(None, overrides)), Path.cwd(), mlflow_module_uri  # cwd: the module store's folder


def test_run_logs_the_weight_plots(gate_run):
    result, _, _ = gate_run
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("router_weights", "w_text_correct_vs_wrong", "w_text_over_epochs", "gate_by_dimension")}
    assert len(result.module.epoch_weights) == 2  # one validation distribution per epoch went into the epochs figure


def test_gate_per_dimension_averages_to_w_text(gate_run):
    result, _, _ = gate_run
    diagnostics = fusion_diagnostics(result.module.model, result.data.splits["test"], pad_id=0, batch_size=7)
    assert set(diagnostics) == {"gate"}  # what the variant offers (Fusion.diagnostics), not found by attribute name
    mean, std = diagnostics["gate"]
    assert mean.shape == std.shape == (16,) and ((mean > 0) & (mean < 1)).all()
    # gate's w_text is the per-sample mean over dimensions, so both averages agree
    assert mean.mean() == pytest.approx(result.predictions["w_text"].mean(), abs=1e-5)


def test_report_tables(gate_run):
    result, _, _ = gate_run
    report = build_report(result.run_id, top=4)
    test = result.predictions
    assert report.split == "test" and report.fusion == "gate" and not report.notes
    assert len(report.top_text) == len(report.top_tab) == 4
    assert report.top_text["w_text"].is_monotonic_decreasing and report.top_text["w_text"].min() >= test["w_text"].nlargest(4).min() - 1e-6
    assert report.top_tab["w_tab"].is_monotonic_decreasing and report.top_tab["w_tab"].min() >= test["w_tab"].nlargest(4).min() - 1e-6
    rows = result.data.splits["test"].frame.set_index("id")
    first = report.top_text.iloc[0]
    assert first["dialogue"].startswith(rows.loc[first["id"], "dialogue"].splitlines()[0][:40])
    assert "(z=" in first["strongest_tabular"]
    per_class = report.per_class.set_index("label")
    assert per_class["n"].sum() == len(test)
    for label, g in test.groupby("label"):
        assert per_class.loc[label, "accuracy"] == pytest.approx((g["label"] == g["pred"]).mean())
        assert per_class.loc[label, "w_text_mean"] == pytest.approx(g["w_text"].mean())
    assert set(report.per_modality["true_modality"]) <= {"text", "tab", "both"}
    per_modality = report.per_modality.set_index("true_modality")
    for modality, g in test.groupby("true_modality"):  # the per-sample faithfulness check, summarised per group
        assert per_modality.loc[modality, "faithfulness"] == pytest.approx(g["faithful"].mean())
    assert "faithful" in report.top_text.columns
    assert report.attribution_auroc == pytest.approx(mlflow.get_run(result.run_id).data.metrics["test_attribution_auroc"], abs=1e-6)


def test_inspect_command_prints_writes_and_logs_the_report(gate_run, tmp_path, capsys):
    result, _, _ = gate_run
    assert cli(["inspect", "--run-id", result.run_id, "--top", "3", "--output", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    auroc = mlflow.get_run(result.run_id).data.metrics["test_attribution_auroc"]
    for text in ("w_text per true class (test)", "leaned most on the text", "leaned most on the table", f"attribution_auroc (w_text vs the truly informative modality) = {auroc:.3f}"):
        assert text in out
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<img") == 4 and page.count("<table") == 4 and result.run_id in page
    logged = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="inspect/report.html", dst_path=str(tmp_path / "logged"))
    assert Path(logged).read_text() == page


def test_inspect_unknown_run_is_a_user_error(gate_run, capsys):
    assert cli(["inspect", "--run-id", "0123456789abcdef", "--no-log"]) == 2
    assert "not found" in capsys.readouterr().err


def test_strongest_tabular_values_rank_by_z_score():
    pre = TabularPreprocessor(numeric={"a": (0.0, 1.0), "b": (10.0, 2.0)}, categorical={"c": ["x", "y"]}, classes=["0", "1"])
    rows = pd.DataFrame({"a": [0.5, np.nan], "b": [20.0, 11.0], "c": ["x", None]})
    out = strongest_tabular(rows, pre, k=2)
    assert out.iloc[0] == "b=20 (z=+5.0), a=0.5 (z=+0.5)"
    assert out.iloc[1] == "b=11 (z=+0.5)"  # a missing value is not a strong value; a missing category is not shown


def test_every_weight_figure_is_labelled():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": rng.choice(["a", "b"], 30), "pred": rng.choice(["a", "b"], 30), "w_text": rng.random(30)})
    frame = frame.assign(**{f"expert_{e}": rng.random(30) for e in range(4)})
    frames = {"train": frame, "val": frame.head(20), "test": frame.tail(20)}
    figures = weight_figures(frames, "moe_topk", [rng.random(20), rng.random(20)], {"gate": (rng.random(16), rng.random(16) / 10, "test")}, ["text", "text", "tab", "tab"])
    assert set(figures) == {"w_text_correct_vs_wrong", "w_text_over_epochs", "expert_load", "gate_by_dimension"}
    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None, name
        plt.close(fig)
    labels = [t.get_text() for t in figures["expert_load"].axes[0].get_xticklabels()]
    assert labels == ["0\ntext", "1\ntext", "2\ntable", "3\ntable"]  # what the variant says each expert reads
