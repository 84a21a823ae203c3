"""Real servers on loopback: an MLflow tracking server for the registry, a Prefect server for schedules."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import run_module

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[0][-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not come up")


def _server(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_register_against_an_mlflow_tracking_server(built_project: Path, tmp_path: Path):
    port = _port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = _server(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                      "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                      "--artifacts-destination", str(tmp_path / "artifacts")], env, tmp_path)
    try:
        _wait(f"http://127.0.0.1:{port}/health", server)
        project = tmp_path / "p"
        shutil.copytree(built_project, project, symlinks=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        try:
            run_module(project, "stages.register")
            from mlflow import MlflowClient

            version = MlflowClient().get_model_version_by_alias("biomedclip-factory", "champion")
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        assert version.version == "1" and version.tags["promotion"] == "champion"
        assert list((tmp_path / "artifacts").rglob("open_clip_config.json")), "artifacts did not reach the server"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_retrain_deployment_on_a_prefect_server(tmp_path: Path):
    from .conftest import REPO

    port = _port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PYTHONPATH": str(REPO)}
    server = _server(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    try:
        _wait(f"http://127.0.0.1:{port}/api/health", server)
        subprocess.run([sys.executable, "-m", "flows.retrain", "--deploy", "--name", "nightly", "--cron", "0 4 * * *",
                        "--profile", "biomedclip", "--push"], cwd=REPO, env=env, check=True, capture_output=True, text=True)
        found = requests.post(f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=10).json()
        assert [(d["name"], d["schedules"][0]["schedule"]["cron"]) for d in found] == [("nightly", "0 4 * * *")]
        assert found[0]["parameters"] == {"profile": "biomedclip", "source": None, "push": True, "notify_block": None}
    finally:
        server.terminate()
        server.wait(timeout=30)
