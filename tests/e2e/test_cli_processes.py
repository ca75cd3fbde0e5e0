"""`python -m mmfusion` as a separate process: exit codes, one `error:` line, nothing written on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from mmfusion.config import load_config, resolved_dict
from mmfusion.fusion import list_fusions

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def runs(uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmfusion", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_train_bad_key_fails_cleanly(tmp_path):
    proc = run_cli(["train", "--config", str(QUICKSTART), "bad.key=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()  # validated before MLflow is touched
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs").exists()


def test_cli_train_missing_config_fails_cleanly(tmp_path):
    proc = run_cli(["train", "--config", str(tmp_path / "nope.yaml")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_config_prints_resolved_yaml(tmp_path):
    proc = run_cli(["config", "--config", str(QUICKSTART), "model.fusion=gate"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fusion: gate" in proc.stdout
    resolved = yaml.safe_load(proc.stdout)
    assert resolved == resolved_dict(load_config(QUICKSTART, ["model.fusion=gate"]))
    assert resolved["seed"] == 7 and resolved["trainer"]["max_epochs"] == 20


def test_cli_fusions_lists_variants_options_and_presets(tmp_path):
    proc = run_cli(["fusions"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip() and not line.startswith(" ")]
    assert "moe" in names
    assert names == list_fusions()
    assert "options (model.fusion_options): router=linear, routing=soft, gumbel_temperature=1.0" in proc.stdout
    assert "preset moe-mlp-hard: router=mlp, routing=hard" in proc.stdout and "preset moe_topk-mlp-hard: router=mlp" in proc.stdout


def test_cli_data_error_is_exit_2_without_a_run(mlflow_uri, tiny_bert, tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "mmfusion", "train", f"model.text_encoder={tiny_bert}", "data.source=table", f"data.path={tmp_path / 'd.csv'}", "data.text_column=dialogue"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "missing column(s) 'dialogue'" in proc.stderr and "d.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert len(runs(mlflow_uri)) == 0


def test_cli_train_prints_each_lightning_line_once(tiny_overrides, tmp_path):
    proc = run_cli(["train", *tiny_overrides, "export.onnx=false", "tracking.log_model=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "GPU available:" in line]
    assert len(lines) == 1, lines  # Lightning's own handler and the root one both printed it
