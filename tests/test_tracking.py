"""A tracking server that is down, hangs or fails: the stage says so at once, and stops in one line naming it."""
from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import make_project, project_env, stage_command

KNOBS = ("(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT): "
         "start it, or point MLFLOW_TRACKING_URI at one that runs; the last error: ")


class _Failing(http.server.BaseHTTPRequestHandler):
    """A server whose backend is broken: 500 to everything, /health included."""

    def do_GET(self) -> None:
        self.send_response(500)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow  # a stage in a subprocess
@pytest.mark.parametrize("server, retries, said", [
    ("down", 2, f"did not answer through 2 retries over ~2 s of waits, each try up to 1 s more {KNOBS}"),
    ("hung", 0, f"did not answer through 0 retries over ~0 s of waits, each try up to 1 s more {KNOBS}"),
    ("failing", 1, "answered every one of its 2 tries with an error (too many 500 error responses): the server's log"),
])
def test_a_tracking_server_that_is_down_hangs_or_fails_is_named_in_one_line(tmp_path: Path, server: str,
                                                                            retries: int, said: str):
    """MLflow retries an unreachable or hung server for minutes with nothing on screen, then raises a 60-line
    traceback; a failing one too. The stage says at once that it is waiting (unless the server answers), does
    no work, and ends with exit 2 and one line naming the server (never its password) and what to do."""
    project = make_project(tmp_path / "project")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if server == "hung":
            listener.listen(8)  # the kernel accepts connections; nobody ever answers them
        elif server == "failing":
            listener.close()
            failing = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Failing)
            threading.Thread(target=failing.serve_forever, daemon=True).start()
        env = {**project_env(project), "MLFLOW_TRACKING_URI": f"http://factory:secret-pw@127.0.0.1:{port}",
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        proc = subprocess.run(stage_command(project, "scrape"), cwd=project, env=env, capture_output=True, text=True)
        if server == "failing":
            failing.shutdown()
            failing.server_close()
    shown = f"http://factory:***@127.0.0.1:{port}"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "secret-pw" not in proc.stderr, proc.stderr[-3000:]
    announced = f"scrape: the MLflow server at {shown} does not answer; waiting for it" in proc.stderr
    assert announced == (server != "failing"), proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("scrape: error:")]
    assert len(error) == 1 and error[0].startswith(f"scrape: error: the MLflow server at {shown} {said}"), error
    assert not (project / "data" / "raw").exists()  # it stopped before any work


STAGE_THAT_HANGS = """
import sys, time
from pathlib import Path
from biomedclip_factory.tracking import stage_run
with stage_run("hangs", Path(sys.argv[1]), {"a": 1}) as run:
    print(run.info.run_id, flush=True)
    time.sleep(120)
"""


def _hanging_stage(project: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", STAGE_THAT_HANGS, str(project)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_killed_stage_s_run_ends_killed_not_running(tmp_path: Path):
    """SIGTERM (a cancelled flow, `docker stop`, preemption) ends the run KILLED; SIGKILL leaves it RUNNING
    until the next stage on this machine sees its process is gone. A live stage's run is left alone."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stopped, stopped_id = _hanging_stage(tmp_path)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(60) == 128 + signal.SIGTERM
    assert client.get_run(stopped_id).info.status == "KILLED"

    killed, killed_id = _hanging_stage(tmp_path)
    live, live_id = _hanging_stage(tmp_path)
    try:
        killed.kill()
        killed.wait(60)
        assert client.get_run(killed_id).info.status == "RUNNING"  # nothing ran to say otherwise
        later, later_id = _hanging_stage(tmp_path)
        later.kill()
        assert client.get_run(killed_id).info.status == "KILLED"
        assert client.get_run(live_id).info.status == "RUNNING"
    finally:
        live.kill()
        live.wait(60)


def test_metrics_through_a_server_outage_are_said_and_counted_never_raised(tmp_path: Path, monkeypatch, capsys):
    """Pretraining's per-step metrics: a tracking server that goes away must not end days of training (the
    loss log keeps every step); a working store gets every row, in order."""
    import mlflow

    from biomedclip_factory.net import free_port
    from biomedclip_factory.tracking import BackgroundMetrics

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = BackgroundMetrics("pretrain", "0" * 32, tracking_uri=f"http://127.0.0.1:{free_port()}")
    for step in range(1, 6):
        down.log({"loss": 5.0 - step}, step)
    assert down.close(wait_s=60) == 5
    said = capsys.readouterr().err
    assert said.count("MLflow did not take the metrics") == 1 and "of step 1 (" in said
    assert "pretrain: 5 metric rows did not reach MLflow run 000" in said

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    up = BackgroundMetrics("pretrain", run_id, tracking_uri=store)
    for step in range(1, 6):
        up.log({"loss": 5.0 - step, "lr": 0.1}, step)
    assert up.close() == 0
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(s, 5.0 - s) for s in range(1, 6)]


SIGTERM_IN_A_FORKED_CHILD = """
import multiprocessing, os, signal, time
from biomedclip_factory.run_status import Terminated, sigterm_unwinds
def nap(ready):
    ready.set()
    time.sleep(60)
with sigterm_unwinds():
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    child = fork.Process(target=nap, args=(ready,))
    child.start()
    ready.wait(30)  # a signal in the instant after fork is lost: Python clears pending signals in the child
    os.kill(child.pid, signal.SIGTERM)
    child.join(30)
    print(child.exitcode)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except Terminated as exc:
        print("unwound", exc.code)
print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""


def test_sigterm_unwinds_the_stage_and_still_kills_a_worker_it_forked():
    """A DataLoader worker forked inside the stage inherits the handler: it must die of SIGTERM as before,
    not unwind a copy of the stage's MLflow run."""
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_A_FORKED_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == [str(-signal.SIGTERM), "unwound", str(128 + signal.SIGTERM), "True"], proc.stderr[-2000:]


def test_a_resumed_stage_continues_its_run_keeping_the_params_it_started_with(tmp_path: Path, capsys, monkeypatch):
    """A pretraining killed and resumed is one MLflow run, one loss curve; a speed setting changed for the
    resume is noted, not refused (MLflow will not change a logged param)."""
    import json

    import mlflow

    from biomedclip_factory.tracking import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # MLflow sets it: undone after
    with stage_run("pretrain", tmp_path, {"lr": 1, "log_every": 10}) as first:
        mlflow.log_metric("loss", 3.0, step=1)
    with stage_run("pretrain", tmp_path, {"lr": 1, "log_every": 5}, continues=first.info.run_id) as again:
        mlflow.log_metric("loss", 2.0, step=2)
    assert again.info.run_id == first.info.run_id
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(first.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"pretrain.lr": "1", "pretrain.log_every": "10"}
    assert json.loads(run.data.tags["resumed_with"]) == {"pretrain.log_every": "5"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    with stage_run("pretrain", tmp_path, {"lr": 1}, continues="0" * 32) as fresh:  # a store that was reset
        pass
    assert fresh.info.run_id != first.info.run_id and "is no pretrain run in the store" in capsys.readouterr().out
    with stage_run("evaluate", tmp_path, {}, continues=first.info.run_id) as other_stage:
        pass
    assert other_stage.info.run_id != first.info.run_id
