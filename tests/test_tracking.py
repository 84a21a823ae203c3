"""A tracking server that is down or hangs: the stage says so at once, and fails in one line naming it."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import make_project, project_env, stage_command

KNOBS = ("s of waits (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR; each try up to "
         "MLFLOW_HTTP_REQUEST_TIMEOUT=1 s): start it, or point MLFLOW_TRACKING_URI at one that runs; the last error: ")


@pytest.mark.slow  # a stage in a subprocess
@pytest.mark.parametrize("server, retries, waits", [("down", 2, 2), ("hung", 0, 0)])
def test_a_silent_tracking_server_is_announced_then_named_in_one_line(tmp_path: Path, server: str, retries: int,
                                                                      waits: int):
    """MLflow retries an unreachable server for ~4 minutes with nothing on screen, then raises a 60-line
    traceback; a hung one (accepts, never answers) too. The stage says at once that it is waiting, does no
    work, and ends with exit 2 and one line that names the server and the knobs."""
    project = make_project(tmp_path / "project")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if server == "hung":
            listener.listen(8)  # the kernel accepts connections; nobody ever answers them
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {**project_env(project), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}
        proc = subprocess.run(stage_command(project, "scrape"), cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"scrape: the MLflow server at {uri} does not answer" in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("scrape: error:")]
    assert len(error) == 1 and error[0].startswith(
        f"scrape: error: the MLflow server at {uri} did not answer through {retries} retries over ~{waits} {KNOBS}"), error
    assert not (project / "data" / "raw").exists()  # it stopped before any work
