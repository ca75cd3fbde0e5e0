"""`compare` on runs with known metrics: the table, the intervals, the paired tests, the files and what is logged."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mmfusion.analysis import compare as comparison
from mmfusion.analysis.compare.report import _pm
from mmfusion.cli import main

T_975_DF2 = 4.302652729911275  # Student t quantile, 97.5%, 2 degrees of freedom (from tables)
ACC = {"concat": [0.80, 0.90, 1.00], "gate": [0.82, 0.93, 1.04], "moe": [0.70, 0.95, 0.85]}
F1 = {"concat": [0.5, 0.6, 0.7], "gate": [0.5, 0.6, 0.7], "moe": [0.4, 0.6, 0.5]}


def log_run(client, exp, label, seed, acc, f1, *, fingerprint="fp0", tags=None, predictions=True):
    run = client.create_run(exp, tags={"mmfusion.fusion": label, "mmfusion.data_fingerprint": fingerprint, **(tags or {})})
    rid = run.info.run_id
    client.log_param(rid, "seed", seed)
    for key, value in {"test_accuracy": acc, "test_f1_macro": f1, "n_trainable_params": 1000 + len(label), "train_seconds": 2.0 * (seed + 1)}.items():
        client.log_metric(rid, key, value)
    if predictions:
        w = np.linspace(0.1, 0.9, 6)
        client.log_text(rid, pd.DataFrame({"id": range(6), "w_text": w, "true_modality": ["text", "tab"] * 3}).to_csv(index=False), "predictions/test.csv")
    client.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def known_runs(mlflow_module_uri):
    client = mlflow.MlflowClient(mlflow_module_uri)
    exp = client.create_experiment("known")
    stale = log_run(client, exp, "gate", 2, 0.10, 0.1)  # an older run of gate at seed 2: the later one replaces it
    ids = [log_run(client, exp, label, seed, ACC[label][seed], F1[label][seed]) for label in ACC for seed in range(3)]
    repro = log_run(client, exp, "moe", 0, 0.0, 0.0, tags={"mmfusion.reproduces": ids[-1]})
    parent = client.create_run(exp, tags={"mmfusion.kind": "zoo"}).info.run_id  # not a training run
    client.set_terminated(parent, "FINISHED")
    return {"exp": "known", "ids": ids, "stale": stale, "repro": repro}


def expected_interval(values):
    x = np.array(values)
    half = T_975_DF2 * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_table_and_intervals_from_known_metrics(known_runs):
    notes = []
    runs = comparison.runs_table(comparison.find_runs(experiment=known_runs["exp"]), notes=notes)
    assert set(runs["run_id"]) == set(known_runs["ids"])  # stale duplicate, reproduction and parent left out
    assert any("reproduction" in n for n in notes) and any("same variant and seed" in n for n in notes)
    cmp = comparison.compare(runs, ["test_accuracy", "test_f1_macro"], "concat", notes)
    s = cmp.summary.set_index("variant")
    for label in ACC:
        mean, low, high = expected_interval(ACC[label])
        assert s.loc[label, "test_accuracy_mean"] == pytest.approx(mean)
        assert s.loc[label, "test_accuracy_ci_low"] == pytest.approx(low)
        assert s.loc[label, "test_accuracy_ci_high"] == pytest.approx(high)
        assert s.loc[label, "test_accuracy_n"] == 3 and s.loc[label, "n_runs"] == 3
    assert s.loc["gate", "train_seconds_mean"] == pytest.approx(4.0)
    assert s.loc["gate", "n_trainable_params_mean"] == 1004

    t = cmp.tests.set_index(["variant", "metric"])
    assert set(t.index.get_level_values(0)) == {"gate", "moe"}  # not the baseline against itself
    for label in ("gate", "moe"):
        ref = stats.ttest_rel(ACC[label], ACC["concat"])
        row = t.loc[(label, "test_accuracy")]
        assert row["n_pairs"] == 3
        assert row["diff_mean"] == pytest.approx(np.mean(ACC[label]) - np.mean(ACC["concat"]))
        assert row["p"] == pytest.approx(ref.pvalue) and row["t"] == pytest.approx(ref.statistic)
    pg, pm = t.loc[("gate", "test_accuracy"), "p"], t.loc[("moe", "test_accuracy"), "p"]
    first = min(1.0, 2 * min(pg, pm))  # Holm over the two variants: smallest p x 2, then the other, kept monotone
    second = min(1.0, max(first, max(pg, pm)))
    assert t.loc[("gate", "test_accuracy"), "p_holm"] == pytest.approx(first if pg <= pm else second)
    assert t.loc[("moe", "test_accuracy"), "p_holm"] == pytest.approx(second if pg <= pm else first)
    assert t.loc[("gate", "test_f1_macro"), "p"] == 1.0 and t.loc[("gate", "test_f1_macro"), "diff_mean"] == 0.0  # identical pairs

    md = comparison.to_markdown(cmp)
    mean, low, high = expected_interval(ACC["gate"])
    assert f"| gate | 3 | {mean:.3f} ± {(high - low) / 2:.3f} |" in md
    assert "**concat**" in md and "Paired t-test against **concat**" in md


def test_holm_adjustment():
    p = pd.Series([0.01, 0.04, 0.03, np.nan], index=list("abcd"))
    adjusted = comparison.holm(p)
    assert adjusted[["a", "b", "c"]].tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(adjusted["d"])


def test_one_seed_has_no_interval_and_unpaired_data_is_not_paired(mlflow_module_uri):
    client = mlflow.MlflowClient(mlflow_module_uri)
    exp = client.create_experiment("few")
    log_run(client, exp, "concat", 0, 0.8, 0.5)
    log_run(client, exp, "concat", 1, 0.9, 0.6)
    log_run(client, exp, "gate", 0, 0.7, 0.5)
    log_run(client, exp, "gate", 1, 0.9, 0.6, fingerprint="other-data")
    cmp = comparison.compare(comparison.runs_table(comparison.find_runs(experiment="few")), ["test_accuracy"])
    assert cmp.tests.set_index("variant").loc["gate", "n_pairs"] == 1  # seed 1 saw different data: not a pair
    assert any("different data" in n for n in cmp.notes)
    assert np.isnan(cmp.tests["p"].iloc[0])  # one pair: no test
    single = comparison.summarize(pd.DataFrame({"label": ["x"], "seed": [0], "m": [0.5]}), ["m"]).iloc[0]
    assert single["m_mean"] == 0.5 and np.isnan(single["m_ci_low"]) and "(n=1)" in _pm(single, "m")


def test_cli_writes_markdown_csv_plots_and_logs_them(known_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--runs", *known_runs["ids"], "--out", str(out), "--metrics", "test_accuracy", "test_f1_macro"]) == 0
    printed = capsys.readouterr().out
    assert "| variant | seeds | test_accuracy | test_f1_macro |" in printed
    for name in ("comparison.md", "summary.csv", "tests.csv", "runs.csv", "metrics.png", "w_text.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["moe", "test_accuracy_mean"] == pytest.approx(np.mean(ACC["moe"]))
    logged = mlflow.search_runs(experiment_names=[known_runs["exp"]], filter_string="tags.`mmfusion.kind` = 'comparison'")
    assert len(logged) == 1 and logged["status"].iloc[0] == "FINISHED"
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(logged["run_id"].iloc[0], "comparison")}
    assert {"comparison/comparison.md", "comparison/metrics.png", "comparison/w_text.png", "comparison/summary.csv"} <= files


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "no MLflow experiment 'nope'"),
    (["--runs", "0123456789abcdef0123456789abcdef"], "no such run(s)"),
    (["--parent", "0123456789abcdef0123456789abcdef"], "has no child runs"),
])
def test_cli_bad_source_is_exit_2(known_runs, tmp_path, capsys, args, message):
    assert main(["compare", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err


def test_study_trials_sharing_a_seed_are_all_kept_but_not_paired(mlflow_module_uri, tmp_path, capsys):
    client = mlflow.MlflowClient(mlflow_module_uri)
    exp = client.create_experiment("study-exp")
    parent = client.create_run(exp, tags={"mmfusion.study": "s1"}).info.run_id  # the study's parent run
    for label, acc in (("concat", 0.7), ("concat", 0.8), ("gate", 0.6), ("gate", 0.9), ("gate", 0.75)):
        log_run(client, exp, label, 42, acc, 0.5, tags={"mlflow.parentRunId": parent, "mmfusion.study": "s1"}, predictions=False)
    assert main(["compare", "--study", "s1", "--out", str(tmp_path / "s"), "--metrics", "test_accuracy", "--no-log", "--no-weights"]) == 0
    summary = pd.read_csv(tmp_path / "s" / "summary.csv").set_index("variant")
    assert summary.loc["gate", "n_runs"] == 3 and summary.loc["gate", "test_accuracy_mean"] == pytest.approx(0.75)
    assert "cannot be paired" in capsys.readouterr().out
