"""Prefect flows for real: the DAG once, scheduled retraining (no-change run trains nothing), failure alerts."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_pipeline_then_retrain_with_nothing_new_trains_nothing(prefect_api, project_on_path: Path):
    from flows.pipeline import pipeline
    from flows.retrain import retrain

    project = project_on_path
    ran = pipeline(project=str(project), scrape_retries=0)
    assert ran == {s: True for s in ran} and len(ran) == 7
    assert json.loads((project / "metrics/register.json").read_text())["promoted"] == 1

    again = retrain(project=str(project), scrape_retries=0)
    assert again["ran"]["scrape"] is True  # the source is always re-listed
    assert again["trained"] is False and again["promoted"] is None
    assert not any(again["ran"][s] for s in ("align", "shard", "tokenizer", "pretrain", "evaluate", "register"))


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
        state = retrain(project=str(project_on_path), source="no/such/mirror", notify_block="custom-webhook/retrain-alerts",
                        scrape_retries=0, return_state=True)
    finally:
        server.shutdown()
    assert state.is_failed()
    assert _Inbox.received, "no notification arrived"
    message = json.loads(_Inbox.received[-1])["text"]
    assert "biomedclip retrain failed" in message and "failed" in message


def test_retrain_deployment_is_scheduled_with_cron(prefect_api, project_on_path: Path):
    from prefect.client.orchestration import get_client

    from flows.retrain import deploy

    deploy("nightly-test", "15 2 * * *", {"profile": None, "source": None, "push": False, "notify_block": None})

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name("biomedclip-retrain/nightly-test")

    deployment = asyncio.run(read())
    assert [s.schedule.cron for s in deployment.schedules] == ["15 2 * * *"]
