"""Prefect flows for real: the DAG once, scheduled retraining (no-change run trains nothing), failure alerts."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from .conftest import copy_built, forget_flows as _forget_flows

pytestmark = pytest.mark.slow


def test_pipeline_then_retrain_with_nothing_new_trains_nothing(prefect_api, built_project: Path, tmp_path: Path):
    """The flow drives DVC stage by stage: after a params change only the affected stages run."""
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
        again = retrain(project=str(project), scrape_retries=0, push=True)
    finally:
        sys.path.remove(str(project))
        _forget_flows()
    assert ran == {"inputs": True, "scrape": False, "align": False, "shard": False, "tokenizer": False, "pretrain": False,
                   "evaluate": True, "register": True}
    registered = json.loads((project / "metrics/register.json").read_text())
    assert registered["version"] == 2 and "champion v1" in registered["promotion_reason"]
    assert "re-scored on this gallery" in registered["promotion_reason"] and not registered["promoted"]  # same weights
    assert again["ran"]["scrape"] is True  # the source is always re-listed
    assert again["trained"] is False and again["promoted"] is None
    assert not any(again["ran"][s] for s in ("align", "shard", "tokenizer", "pretrain", "evaluate", "register"))
    assert sum(1 for f in remote.rglob("*") if f.is_file()) > 50  # dvc push sent the data and model


class _Inbox(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        _Inbox.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_failed_retrain_notifies_through_a_prefect_block(prefect_api, project_on_path: Path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows.retrain import retrain

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Inbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        CustomWebhookNotificationBlock(name="alerts", url=f"http://127.0.0.1:{server.server_port}/hook",
                                       json_data={"text": "{{subject}}: {{body}}"}).save("retrain-alerts", overwrite=True)
        params = (project_on_path / "params.yaml").read_bytes()
        state = retrain(project=str(project_on_path), source="no/such/mirror", notify_block="custom-webhook/retrain-alerts",
                        scrape_retries=0, return_state=True)
    finally:
        server.shutdown()
    assert state.is_failed()
    assert _Inbox.received, "no notification arrived"
    message = json.loads(_Inbox.received[-1])["text"]
    assert "biomedclip retrain failed" in message and "scrape" in message, message
    assert (project_on_path / "params.yaml").read_bytes() == params  # the bad source lasted that run only


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
