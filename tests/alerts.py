"""A webhook inbox for the retrain flow's alerts, saved as a Prefect notification block."""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Inbox(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        Inbox.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def texts() -> list[str]:
    """The alerts received so far, oldest first."""
    return [json.loads(message)["text"] for message in Inbox.received]


@contextlib.contextmanager
def alerts_inbox(api: str | None = None) -> Iterator[str]:
    """A webhook receiving the retrain alerts, saved on ``api`` (the current Prefect API by default) as the block
    whose name this yields."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    Inbox.received.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Inbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with temporary_settings({PREFECT_API_URL: api} if api else {}):
            CustomWebhookNotificationBlock(name="alerts", url=f"http://127.0.0.1:{server.server_port}/hook",
                                           json_data={"text": "{{subject}}: {{body}}"}).save("retrain-alerts",
                                                                                             overwrite=True)
        yield "custom-webhook/retrain-alerts"
    finally:
        server.shutdown()
