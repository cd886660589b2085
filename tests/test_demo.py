"""`samx demo` (what `make demo` runs) as a user runs it: a small phantom set through the whole
loop with a real Label Studio, the URLs it prints answer, Ctrl-C stops every process it
started, and a second run reuses everything."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ml_backend.service import NO_MODEL
from tests.labelstudio_fixtures import free_port

pytestmark = pytest.mark.slow


def _run_until_ready(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(errors="replace")
        if "Ctrl-C stops everything." in text:
            return proc, text
        time.sleep(1)
    proc.kill()
    pytest.fail(f"samx demo did not come up (exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}")


def _children(data: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if str(data) in line and " demo" not in line]


def test_demo_runs_the_loop_stops_cleanly_and_reuses(tmp_path: Path):
    data = tmp_path / "demo-data"
    web, ml, ls = free_port(), free_port(), free_port()
    env = {**os.environ, "SAMX_LABEL_STUDIO_PORT": str(ls)}
    cmd = [sys.executable, "-m", "backend.cli", "--data-dir", str(data), "demo", "--n", "80", "--cluster-epochs", "3",
           "--sorter-epochs", "2", "--detector-epochs", "1", "--web-port", str(web), "--ml-port", str(ml)]
    proc, text = _run_until_ready(cmd, env, tmp_path / "first.log", timeout=900)
    try:
        assert "simulated radiologist:" in text and re.search(r"detector \S+ trained", text), text[-3000:]
        password = re.search(r"log in as admin / (\S+)", text).group(1)
        assert password == (data / "initial-admin-password").read_text().strip()
        assert httpx.get(f"http://127.0.0.1:{web}/login").status_code == 200
        creds = json.loads((data / "ml-backend" / "credentials.json").read_text())
        health = httpx.get(f"http://127.0.0.1:{ml}/health", auth=(creds["username"], creds["password"])).json()
        assert health["model_version"] != NO_MODEL and health["status"] == "UP"
        ls_creds = json.loads((data / "labelstudio" / "credentials.json").read_text())
        project = httpx.get(f"http://127.0.0.1:{ls}/api/projects/1/",
                            headers={"Authorization": f"Token {ls_creds['token']}"}).json()
        assert project["task_number"] > 0 and project["total_predictions_number"] > 0  # the detector's push
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
    assert "stopped: worker, ML backend, web app, Label Studio" in (tmp_path / "first.log").read_text()
    assert _children(data) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{ls}/health", timeout=2)

    t = time.monotonic()
    proc, text = _run_until_ready(cmd, env, tmp_path / "second.log", timeout=300)
    try:
        assert "ingest: 0 new, 80 already in" in text
        for step in ("simulated radiologist:", "trained", "cluster", "import"):
            assert step not in text.split("ingest:")[1], step  # nothing redone
        print(f"second start: {time.monotonic() - t:.0f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert _children(data) == []
