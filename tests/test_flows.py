"""Prefect flows for real: the DAG once, scheduled retraining (no-change run trains nothing), failure alerts."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from .alerts import Inbox, alerts_inbox, texts
from .conftest import copy_built, forget_flows as _forget_flows, project_env

pytestmark = pytest.mark.slow


def test_pipeline_then_retrain_with_nothing_new_trains_nothing(prefect_api, built_project: Path, tmp_path: Path):
    """The flow drives DVC stage by stage: after a params change only the affected stages run. Then a broken
    champion: the retrain completes, its model is refused, and the team is alerted."""
    project = tmp_path / "project"
    copy_built(built_project, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["retrieval_splits"] = ["test"]  # changes eval.json, so register follows
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The champion as if scored before the last scrape grew the test split: the gate must score it
    # again on this gallery rather than compare numbers from two galleries.
    from mlflow import MlflowClient
    registry = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    tags = json.loads(registry.get_model_version("biomedclip-factory", "1").tags["eval_metrics"])
    tags["retrieval.test.gallery_size"] -= 1
    registry.set_model_version_tag("biomedclip-factory", "1", "eval_metrics", json.dumps(tags))
    remote = tmp_path / "dvc-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], cwd=project, check=True)
    sys.path.insert(0, str(project))
    _forget_flows()
    try:
        from flows.pipeline import pipeline
        from flows.retrain import retrain

        ran = pipeline(project=str(project), scrape_retries=0)
        registered = json.loads((project / "metrics/register.json").read_text())
        again = retrain(project=str(project), scrape_retries=0, push=True)
        broken = _break_the_champion(registry, tmp_path / "broken")
        params["register"]["margin"] = 0.5  # a commit that changes only the gate: the same build, reused
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "margin"],
                       cwd=project, check=True)
        (tmp_path / "not-a-folder").write_text("")  # and its push fails: the remote cannot be made
        subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-f", "-d", "local",
                        str(tmp_path / "not-a-folder" / "remote")], cwd=project, check=True)
        with alerts_inbox() as block:
            refused = retrain(project=str(project), scrape_retries=0, notify_block=block, push=True, push_retries=0,
                              return_state=True)
    finally:
        sys.path.remove(str(project))
        _forget_flows()
    assert ran == {"inputs": True, "scrape": False, "align": False, "shard": False, "tokenizer": False, "pretrain": False,
                   "evaluate": True, "register": True}
    assert registered["version"] == 2 and "champion v1" in registered["promotion_reason"]
    assert "re-scored on this gallery" in registered["promotion_reason"] and not registered["promoted"]  # same weights
    assert again["ran"]["scrape"] is True  # the source is always re-listed
    assert again["trained"] is False and again["promoted"] is False  # the registry reconciled: v2 again
    assert not any(again["ran"][s] for s in ("align", "shard", "tokenizer", "pretrain", "evaluate"))
    assert sum(1 for f in remote.rglob("*") if f.is_file()) > 50  # dvc push sent the data and model

    # A push that fails fails the run, and its alert says what the run did before it.
    assert refused.is_failed() and "`dvc push` failed" in refused.message, refused.message
    assert "'evaluate': False, 'register': True" in refused.message and "'promoted': False" in refused.message
    registered = json.loads((project / "metrics/register.json").read_text())
    assert registered["version"] == 2, "the same build was registered again"
    assert registered["blocked"] == 1 and f"champion v{broken} could not be scored" in registered["promotion_reason"]
    assert registry.get_model_version_by_alias("biomedclip-factory", "champion").version == int(broken)
    attention, failed = texts()[-2:]
    assert "biomedclip retrain needs attention: v2 not promoted" in attention and "repaired" in attention, attention
    assert "biomedclip retrain failed" in failed and "`dvc push` failed" in failed, failed


def _break_the_champion(registry, empty: Path) -> str:
    """A champion whose artifacts do not load, scored on another gallery: the gate must load it to compare."""
    empty.mkdir()
    champion = registry.get_model_version_by_alias("biomedclip-factory", "champion")
    tags = json.loads(champion.tags["eval_metrics"])
    tags["retrieval.test.gallery_size"] += 7
    version = str(registry.create_model_version("biomedclip-factory", source=str(empty),
                                                tags={"eval_metrics": json.dumps(tags)}).version)
    registry.set_registered_model_alias("biomedclip-factory", "champion", version)
    return version


def test_failed_retrain_notifies_through_a_prefect_block(prefect_api, project_on_path: Path):
    from flows.retrain import retrain

    with alerts_inbox() as block:
        params = (project_on_path / "params.yaml").read_bytes()
        state = retrain(project=str(project_on_path), source="no/such/mirror", notify_block=block,
                        scrape_retries=0, return_state=True)
    assert state.is_failed()
    assert Inbox.received, "no notification arrived"
    message = texts()[-1]
    assert "biomedclip retrain failed" in message and "scrape" in message, message
    assert (project_on_path / "params.yaml").read_bytes() == params  # the bad source lasted that run only


class _Silent(BaseHTTPRequestHandler):
    """A mirror that accepts and never answers (until released): the scrape stage waits on it."""
    asked = threading.Event()
    released = threading.Event()
    requests = 0

    def do_GET(self) -> None:
        _Silent.requests += 1
        _Silent.asked.set()
        _Silent.released.wait(3600)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _silent_mirror() -> Iterator[str]:
    """The URL of a ``_Silent`` mirror, released and shut down on the way out."""
    _Silent.asked.clear()
    _Silent.released.clear()
    _Silent.requests = 0
    mirror = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    mirror.daemon_threads = True
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{mirror.server_port}/"
    finally:
        _Silent.released.set()
        mirror.shutdown()


def test_a_retrain_stopped_by_sigterm_alerts_too(prefect_api, project_on_path: Path, tmp_path: Path):
    """`docker stop`, a Kubernetes eviction or a preempted node sends SIGTERM: Prefect ends the run Crashed,
    not Failed, and runs only on_crashed hooks. The alert must go all the same."""
    from prefect.settings import PREFECT_API_URL

    env = {**project_env(project_on_path), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "flow.log"
    with _silent_mirror() as url, alerts_inbox() as block, log.open("w") as out, subprocess.Popen(
            [sys.executable, "-m", "flows.retrain", "--source", url, "--notify-block", block], cwd=project_on_path,
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True) as flow_run:
        try:
            assert _Silent.asked.wait(timeout=180), log.read_text()[-3000:]  # the scrape stage is under way
            flow_run.send_signal(signal.SIGTERM)
            assert flow_run.wait(timeout=120) != 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(flow_run.pid, signal.SIGKILL)  # whatever is left of it
    said = log.read_text()
    assert "Crashed" in said and "scrape: stopped its command" in said, said[-3000:]
    assert Inbox.received, "no notification arrived:\n" + said[-3000:]
    message = texts()[-1]
    assert "biomedclip retrain crashed" in message and "termination signal" in message, message


@contextlib.contextmanager
def _alarm_taken() -> Iterator[None]:
    """SIGALRM held by a handler, as pytest-timeout's, a host application's or an outer timeout's holds it."""
    if signal.getsignal(signal.SIGALRM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_a_retrain_past_its_timeout_is_stopped_and_alerts(prefect_api, project_on_path: Path):
    """A hung run (here a scrape that would wait 10 minutes on a mirror that never answers) would hold the
    schedule with no alert: past timeout_hours its stage's command is stopped, the scrape is not retried, and
    the run fails, which alerts. Here SIGALRM is taken, where a signal-based timeout only raises once the
    stage ends by itself."""
    from biomedclip_factory.workspace import stage_processes
    from flows.retrain import retrain

    params = yaml.safe_load((project_on_path / "params.yaml").read_text())
    params["scrape"].update(timeout_s=600, retries=0)
    (project_on_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    timeout_s = 40
    started = time.monotonic()
    with _alarm_taken(), _silent_mirror() as url, alerts_inbox() as block:
        state = retrain(project=str(project_on_path), source=url, notify_block=block, scrape_retries=1,
                        timeout_hours=timeout_s / 3600, return_state=True)
    took = time.monotonic() - started
    assert _Silent.requests == 1, "the scrape was retried after the deadline"
    assert state.is_failed() and "stopped after 0.0111111 h (timeout_hours)" in state.message, state.message
    assert took < timeout_s + 120, f"the run went on {took:.0f} s, not stopped at its {timeout_s} s deadline"
    assert stage_processes(project_on_path, "scrape") == []  # not left waiting on the mirror
    message = texts()[-1]
    assert "biomedclip retrain timed out" in message and "timeout_hours" in message, message


def test_a_run_its_deadline_cannot_end_is_reported_stuck_once(tmp_path: Path):
    """A hang that stopping the stage commands does not end (inside DVC, a process in uninterruptible I/O)
    would never reach the timed-out alert: the watchdog sends its own, once."""
    from flows.retrain import deadline

    said: list[str] = []
    with deadline(tmp_path, 0.2 / 3600, on_stuck=said.append, grace_s=0.3, poll_s=0.05) as stopped:
        waited = time.monotonic() + 30
        while not said and time.monotonic() < waited:  # the hang
            time.sleep(0.05)
        time.sleep(0.5)  # more of the watchdog's rounds
    assert stopped.is_set() and len(said) == 1, said
    assert "past timeout_hours (5.55556e-05 h) and still running 0.3 s after" in said[0], said


def test_a_second_run_in_the_workspace_fails_at_once_and_changes_nothing(prefect_api, project_on_path: Path):
    """A manual run during the nightly one would rewrite params.yaml under its stages: it is refused, by name."""
    from biomedclip_factory.workspace import workspace_held
    from flows.pipeline import pipeline
    from flows.retrain import retrain

    params = (project_on_path / "params.yaml").read_bytes()
    with workspace_held(project_on_path):  # the nightly run
        states = [retrain(project=str(project_on_path), source="http://elsewhere/", return_state=True),
                  pipeline(project=str(project_on_path), return_state=True)]
    for state in states:
        assert state.is_failed() and "another pipeline or retrain run holds this workspace" in state.message, state
        assert f"pid {os.getpid()} on " in state.message
    assert (project_on_path / "params.yaml").read_bytes() == params
    assert not (project_on_path / "metrics" / "inputs.json").exists()  # no stage ran


def _refused_while(process: subprocess.Popen, project: Path, said: str) -> None:
    """The workspace is refused, saying ``said``, while ``process`` runs; then ``process`` is stopped."""
    from biomedclip_factory.workspace import WorkspaceBusyError, workspace_held

    try:
        with pytest.raises(WorkspaceBusyError, match=said):
            with workspace_held(project):
                pass
    finally:
        process.kill()
        process.wait()


NFS_HOLDER = """
import errno, fcntl, sys, time
from pathlib import Path
def no_flock(fd, operation):  # NFS: flock is a POSIX lock there, which needs a file open for writing
    raise OSError(errno.EBADF, "Bad file descriptor")
fcntl.flock = no_flock
from biomedclip_factory.workspace import workspace_held
with workspace_held(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_the_workspace_lock_holds_where_directories_cannot_be_flocked(tmp_path: Path, monkeypatch):
    """NFS answers flock on a read-only directory with EBADF, Lustre without its flock option with ENOSYS:
    the lock falls back to a POSIX lock on a file (one per process: the holder is another process), and a
    filesystem with no locks at all is said, not run unlocked."""
    import errno
    import fcntl

    from biomedclip_factory.errors import FactoryError
    from biomedclip_factory.workspace import workspace_held

    def refused(code: int):
        def lock(fd, operation):
            raise OSError(code, os.strerror(code))
        return lock

    holder = subprocess.Popen([sys.executable, "-c", NFS_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setattr(fcntl, "flock", refused(errno.EBADF))
    _refused_while(holder, tmp_path, f"another pipeline or retrain run holds this workspace .pid {holder.pid} on ")
    with workspace_held(tmp_path):  # the holder is gone, and with it its lock
        pass
    monkeypatch.setattr(fcntl, "flock", refused(errno.ENOSYS))
    monkeypatch.setattr(fcntl, "lockf", refused(errno.ENOLCK))
    with pytest.raises(FactoryError, match="its filesystem grants no file locks .No locks available., so two flow runs"):
        with workspace_held(tmp_path):
            pass


def test_params_a_killed_run_overrode_are_put_back_by_the_next(project_on_path: Path):
    """SIGKILL (the OOM killer, a lost node) skips every ``finally``: the next run puts params.yaml back first."""
    from biomedclip_factory.workspace import workspace_held

    params = (project_on_path / "params.yaml").read_bytes()
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys; from pathlib import Path;"
                             "from flows.retrain import overridden_params;"
                             "ctx = overridden_params(Path(sys.argv[1]), None, 'http://elsewhere/'); ctx.__enter__();"
                             "os.kill(os.getpid(), signal.SIGKILL)", str(project_on_path)],
                            env=project_env(project_on_path), cwd=project_on_path)
    assert killed.returncode == -signal.SIGKILL
    assert b"http://elsewhere/" in (project_on_path / "params.yaml").read_bytes()
    with workspace_held(project_on_path):
        assert (project_on_path / "params.yaml").read_bytes() == params  # byte for byte, comments kept
    with workspace_held(project_on_path):  # and once only
        assert (project_on_path / "params.yaml").read_bytes() == params


def test_after_a_killed_run_an_edit_to_params_is_kept_and_a_left_stage_command_holds_the_workspace(
        project_on_path: Path, capsys):
    """What a killed run leaves: its override, which someone then edits (a `git pull`, by hand): the edit
    stays; a stage command that outlived it: the next run waits for it rather than run beside it."""
    from biomedclip_factory.workspace import workspace_held
    from flows.retrain import overridden_params

    edited = b"# edited after the crash\n" + (project_on_path / "params.yaml").read_bytes()
    context = overridden_params(project_on_path, None, "http://elsewhere/")
    context.__enter__()  # and never left, as by SIGKILL
    (project_on_path / "params.yaml").write_bytes(edited)
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "DVC_STAGE": "pretrain", "DVC_ROOT": str(project_on_path)})
    _refused_while(left, project_on_path, f"stage commands already run in this workspace .pids {left.pid}")
    with workspace_held(project_on_path):
        assert (project_on_path / "params.yaml").read_bytes() == edited
    assert "kept as edited" in capsys.readouterr().out


def test_a_runs_profile_and_source_last_only_that_run(tmp_path: Path):
    """A manual run with other parameters must not become every later scheduled run's."""
    from flows.retrain import overridden_params

    (tmp_path / "params").mkdir()
    original = b"# ours\nscrape:\n  source: sample/pmc   # the bundled mirror\n"
    (tmp_path / "params.yaml").write_bytes(original)
    (tmp_path / "params" / "big.yaml").write_text("scrape:\n  source: https://pmc.example\n  workers: 32\n")
    with overridden_params(tmp_path, "big", "http://127.0.0.1:9/mirror"):
        during = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert during["scrape"] == {"source": "http://127.0.0.1:9/mirror", "workers": 32}
    assert (tmp_path / "params.yaml").read_bytes() == original
    with pytest.raises(RuntimeError, match="stage failed"), overridden_params(tmp_path, None, "http://x"):
        raise RuntimeError("stage failed")
    assert (tmp_path / "params.yaml").read_bytes() == original
    with pytest.raises(FileNotFoundError, match="no profile"), overridden_params(tmp_path, "absent", None):
        pass
    assert (tmp_path / "params.yaml").read_bytes() == original
