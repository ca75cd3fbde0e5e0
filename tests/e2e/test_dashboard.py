"""optuna-dashboard, the documented study viewer, reads a study from the storage `mmfusion tune` writes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from mmfusion.config import StudyConfig
from mmfusion.jobs.tune.storage import make_storage

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_a_study_from_our_storage(tmp_path):
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    if not Path(exe).exists():
        pytest.skip("optuna-dashboard is not installed (pip install -r requirements-dashboard.txt)")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sc = StudyConfig(study_name="viewer", n_trials=3, search_space={"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    study = optuna.create_study(study_name="viewer", storage=make_storage(url, sc), direction="maximize")
    study.optimize(lambda t: t.suggest_float("optim.lr", 1e-4, 1e-2, log=True) * 10, n_trials=3)
    port = _free_port()
    proc = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 60 s"
        (shown,) = [s for s in studies if s["study_name"] == "viewer"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{shown['study_id']}?after=0", timeout=10) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 3 and {p["name"] for t in detail["trials"] for p in t["params"]} == {"optim.lr"}
        best = max(t.value for t in study.trials)
        assert any(abs(v - best) < 1e-9 for t in detail["trials"] for v in t["values"])
    finally:
        proc.terminate()
        proc.wait(10)
