"""Real servers on loopback: an MLflow tracking server for the registry, a Prefect server for schedules."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from biomedclip_factory.net import free_port
from biomedclip_factory.workspace import stage_processes

from flows.pipeline import stop_stage_commands

from .alerts import alerts_inbox, texts
from .conftest import UP_TO_DATE, copy_built, dvc, dvc_status, stage_command


pytestmark = pytest.mark.slow


def _wait(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {_tail(proc)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not come up")


def _server(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    """A server whose log goes to a file beside it: an unread pipe fills up and stalls a chatty server."""
    log = cwd / f"{args[0]}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _tail(proc: subprocess.Popen) -> str:
    return proc.log.read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _run_register(project: Path, uri: str, user: str | None, password: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=f"{project / 'src'}{os.pathsep}{project}",
               HOME=str(project))  # no ~/.mlflow/credentials of whoever runs the tests
    if user is not None:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
    return subprocess.run(stage_command(project, "register"), cwd=project, env=env, capture_output=True,
                          text=True)


def test_the_team_registry_refuses_alias_changes_from_anyone_but_the_pipeline(built_project: Path, tmp_path: Path):
    """README's team setup: MLflow's basic-auth app with the shipped config. The register stage
    authenticates through MLflow's standard variables and its gate sets champion; an anonymous
    client, a team member and a wrong password cannot move it."""
    port, admin = free_port(), ("admin", "admin-secret-1")
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    project = tmp_path / "p"
    copy_built(built_project, project)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_AUTH_CONFIG_PATH": str(project / "deploy" / "mlflow_basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"}
    server = _server(["mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1",  # one client at a time here: 3 more would only cost their start
                      "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                      "--artifacts-destination", str(tmp_path / "artifacts")], env, tmp_path)
    try:
        _wait(f"http://127.0.0.1:{port}/health", server)
        for user in ("factory", "alice"):
            created = requests.post(f"{api}/users/create", json={"username": user, "password": f"{user}-pw-123"},
                                    auth=admin, timeout=10)
            assert created.status_code == 200, created.text
        uri = f"http://127.0.0.1:{port}"
        refused = _run_register(project, uri, None, None)
        assert refused.returncode == 2 and "MLFLOW_TRACKING_USERNAME" in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
        wrong = _run_register(project, uri, "factory", "not-the-password")
        assert wrong.returncode == 2 and "UNAUTHENTICATED" in wrong.stderr and "'factory'" in wrong.stderr
        ok = _run_register(project, uri, "factory", "factory-pw-123")
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-3000:]

        alias = {"name": "biomedclip-factory", "alias": "champion", "version": "1"}
        champion = requests.get(f"{api}/registered-models/alias", params={"name": alias["name"], "alias": "champion"},
                                auth=("alice", "alice-pw-123"), timeout=10)
        assert champion.status_code == 200 and champion.json()["model_version"]["version"] == "1"  # alice reads
        assert champion.json()["model_version"]["tags"] and any(
            t["key"] == "promotion" and t["value"] == "champion" for t in champion.json()["model_version"]["tags"])
        anonymous = requests.post(f"{api}/registered-models/alias", json=alias, timeout=10)
        member = requests.post(f"{api}/registered-models/alias", json=alias, auth=("alice", "alice-pw-123"), timeout=10)
        member_delete = requests.delete(f"{api}/registered-models/alias",
                                        json={"name": alias["name"], "alias": "champion"},
                                        auth=("alice", "alice-pw-123"), timeout=10)
        assert (anonymous.status_code, member.status_code, member_delete.status_code) == (401, 403, 403)
        assert list((tmp_path / "artifacts").rglob("open_clip_config.json")), "artifacts did not reach the server"
    finally:
        _stop(server)


def _prefect(method: str, url: str, **kwargs) -> Any:
    """A Prefect API call as Prefect's own client makes it: a busy server's SQLite answers 503 ("database is
    locked") and the like, which the client retries; any other answer than 2xx fails with the server's text."""
    for attempt in range(6):
        response = requests.request(method, url, timeout=10, **kwargs)
        if response.status_code not in (408, 429, 502, 503):
            break
        time.sleep(2 ** attempt / 4)
    assert response.ok, f"{method} {url}: {response.status_code} {response.text[:2000]}"
    return response.json()


def _run_logs(api: str, run_id: str) -> list[dict]:
    return _prefect("POST", f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}})


def _deployment(api: str, worker: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 120
    found: list = []
    while not found and time.monotonic() < deadline and worker.poll() is None:
        found = _prefect("POST", f"{api}/deployments/filter", json={})
        time.sleep(1)
    assert found, _tail(worker) if worker.poll() is not None else "no deployment"
    return found[0]


def _final_states(api: str, run_ids: list[str], seconds: float) -> dict[str, dict]:
    deadline, runs = time.monotonic() + seconds, {}
    while time.monotonic() < deadline:
        runs = {i: _prefect("GET", f"{api}/flow_runs/{i}") for i in run_ids}
        if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs.values()):
            break
        time.sleep(2)
    return runs


def _logged(api: str, run_id: str, text: str, seconds: float = 60) -> list[str]:
    """The run's log lines, once one holds ``text`` (the runner ships logs in batches, some after the run ends)."""
    deadline = time.monotonic() + seconds
    messages = [entry["message"] for entry in _run_logs(api, run_id)]
    while not any(text in m for m in messages) and time.monotonic() < deadline:
        time.sleep(2)
        messages = [entry["message"] for entry in _run_logs(api, run_id)]
    return messages


def _flow_run_process(api: str, run_id: str, serving: subprocess.Popen, seconds: float) -> Any:
    """The process ``serving`` started for flow run ``run_id`` (a multiprocessing child), once the run runs."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _prefect("GET", f"{api}/flow_runs/{run_id}")["state"]["type"] == "RUNNING":
            started = []
            for child in psutil.Process(serving.pid).children():
                with contextlib.suppress(psutil.Error):  # one that ended meanwhile
                    if "spawn_main" in " ".join(child.cmdline()):
                        started.append(child)
            if len(started) == 1:  # limit=1: the one run
                return started[0]
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} never ran: {_tail(serving)}")


def test_scheduled_retraining_runs_to_completion_on_a_prefect_server(built_project: Path, tmp_path: Path):
    """The README's schedule against a real server: the serve process registers the cron deployment in the
    user's time zone, keeps serving through a server outage (a restart must not end the schedule), and after
    it executes the nights that came due one at a time: the earlier ones end at once, superseded, and the
    latest runs the pipeline, which with nothing new trains nothing. A run killed outright (the OOM killer)
    runs none of its own hooks: the serve process marks it crashed and sends the alert."""
    project = tmp_path / "project"
    copy_built(built_project, project)
    weights = (project / "models/clip/open_clip_model.safetensors").read_bytes()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server_args = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    # Polls each second, each failing after one retry: Prefect's own runner would stop after three such polls
    serve_env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_CLIENT_MAX_RETRIES": "1"}
    server = _server(server_args, env, tmp_path)
    worker = None
    try:
        _wait(f"{api}/health", server)
        with alerts_inbox(api) as block:
            worker = _server(["flows.retrain", "--serve", "--name", "nightly", "--cron", "0 4 * * *",
                              "--timezone", "Europe/Berlin", "--notify-block", block], serve_env, project)
            deployment = _deployment(api, worker)
            assert deployment["name"] == "nightly" and deployment["schedules"][0]["active"] and not deployment["paused"]
            assert deployment["schedules"][0]["schedule"] | {"cron": "0 4 * * *", "timezone": "Europe/Berlin"} \
                == deployment["schedules"][0]["schedule"]
            assert deployment["global_concurrency_limit"] is None  # a lease the server would lose on a restart
            assert deployment["entrypoint"] == "flows.retrain.retrain"  # importable by any worker, not __main__

            _stop(server)  # the outage: a server upgrade, a host reboot
            deadline = time.monotonic() + 60
            while _tail(worker).count("did not answer the poll") < 4 and time.monotonic() < deadline:
                time.sleep(1)
            assert worker.poll() is None, _tail(worker)
            assert _tail(worker).count("did not answer the poll") >= 4, _tail(worker)
            server = _server(server_args, env, tmp_path)
            _wait(f"{api}/health", server)

            def due(minutes_late: float) -> str:
                return _prefect("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={"state": {
                    "type": "SCHEDULED", "state_details": {"scheduled_time": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60 * minutes_late))}}})["id"]

            nights = [due(late) for late in (3, 2, 1)]
            runs = _final_states(api, nights, 400)
            assert worker.poll() is None, _tail(worker)
            latest = _logged(api, nights[-1], "'trained'")
            skipped = [_logged(api, i, "superseded by") for i in nights[:-1]]
            assert not texts(), texts()  # nothing to alert about yet

            killed = due(0)
            flow_process = _flow_run_process(api, killed, worker, 120)
            waited = time.monotonic() + 60
            while not stage_processes(project) and time.monotonic() < waited:  # killed amid a stage's command
                time.sleep(0.2)
            flow_process.kill()
            crashed = _final_states(api, [killed], 120)[killed]
            deadline = time.monotonic() + 60
            while not texts() and time.monotonic() < deadline:
                time.sleep(1)
            assert worker.poll() is None, _tail(worker)
    finally:
        try:
            for proc in (worker, server):
                _stop(proc)
        finally:
            stop_stage_commands(project)  # what the killed run left running
    assert [r["state"]["type"] for r in runs.values()] == ["COMPLETED"] * 3, [r["state"] for r in runs.values()]
    last = runs[nights[-1]]["name"]
    assert all(any(f"superseded by {last}" in m for m in messages) for messages in skipped), skipped
    assert any("'trained': False" in m for m in latest), latest[-10:]
    spans = sorted((r["start_time"], r["end_time"]) for r in runs.values())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans  # one at a time
    assert (project / "models/clip/open_clip_model.safetensors").read_bytes() == weights
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]
    assert any(f"biomedclip retrain crashed ({crashed['name']})" in text and "-9" in text for text in texts()), texts()


def test_the_retrain_flow_pushes_to_an_s3_remote_and_a_fresh_clone_pulls_an_up_to_date_workspace(
        built_project: Path, tmp_path: Path):
    """The team's data remote on a real S3 implementation (moto) on loopback: ``flows.retrain --push``
    sends data and models there, and a clone of the repo gets them back with ``dvc pull``."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for inherited in ("PREFECT_API_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(inherited, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # the flow's own local API, on a busy machine
    project, clone = tmp_path / "project", tmp_path / "clone"
    copy_built(built_project, project)
    s3 = _server(["moto.server", "-H", "127.0.0.1", "-p", str(port)], env, tmp_path)
    try:
        _wait(f"http://127.0.0.1:{port}/moto-api/", s3)
        assert requests.put(f"http://127.0.0.1:{port}/factory-data", timeout=10).status_code == 200
        dvc(project, "remote", "add", "-d", "team", "s3://factory-data/dvc", env=env)
        dvc(project, "remote", "modify", "team", "endpointurl", f"http://127.0.0.1:{port}", env=env)
        flow_env = {**env, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}
        retrain = subprocess.run([sys.executable, "-m", "flows.retrain", "--push"], cwd=project, env=flow_env,
                                 capture_output=True, text=True, timeout=900)
        assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-3000:]
        (project / ".gitignore").open("a").write("mlflow.db\nmlartifacts/\n")
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "retrained"],
                       cwd=project, check=True)
        listing = requests.get(f"http://127.0.0.1:{port}/factory-data?list-type=2", timeout=10).text
        assert listing.count("<Key>dvc/") >= 20, listing[:2000]  # every file of every output, content-addressed

        subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
        assert not (clone / "models" / "clip").exists()
        dvc(clone, "pull", env=env)
        status = dvc_status(clone, env=env)
    finally:
        _stop(s3)
    assert status == UP_TO_DATE, status
    for path in ("models/clip/open_clip_model.safetensors", "data/pairs/pairs.parquet", "data/shards/manifest.json"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path

