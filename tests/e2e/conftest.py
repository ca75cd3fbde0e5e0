"""Fixtures of the e2e lane (every test here is marked slow by tests/conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, point_mlflow):
    """`mlflow server` on loopback with a SQLite backend and proxied artifacts, in tmp/server; MLFLOW_TRACKING_URI
    points at it and the working directory is tmp/work, so anything written locally by mistake shows there."""
    server, work = tmp_path / "server", tmp_path / "work"
    server.mkdir()
    work.mkdir()
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{server / 'server.db'}", "--artifacts-destination", str(server / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(server / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: a faster start
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=server, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(server / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        point_mlflow(work, url)
        yield url, server / "artifacts", work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
