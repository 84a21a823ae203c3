"""A real HTTP server on loopback that serves a folder in the PMC Cloud bucket layout.

It answers S3 ListObjectsV2 (``?list-type=2&prefix=&delimiter=/``, paginated with continuation
tokens) and GETs of keys, like the live bucket. Faults can be injected per key, to prove the
scraper survives them.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass
class Faults:
    """Per-key faults: key → list of HTTP statuses to answer before serving normally."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # serve these keys with one byte flipped
    resets: dict[str, int] = field(default_factory=dict)  # key → times to drop the connection unanswered
    truncations: dict[str, int] = field(default_factory=dict)  # key → times to send half the promised body
    delays: dict[str, float] = field(default_factory=dict)  # key → seconds to stall before answering
    latency: float = 0.0  # seconds added to every request (a far-away server)
    retry_after: str = "0"
    requests: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.monotonic() of each request's arrival

    def take(self, table: dict[str, int], key: str) -> bool:
        """Use up one of ``key``'s remaining faults in ``table``; whether there was one."""
        if table.get(key, 0) > 0:
            table[key] -= 1
            return True
        return False


class MirrorServer:
    def __init__(self, root: Path, page_size: int = 1000) -> None:
        self.root = root
        self.page_size = page_size
        self.faults = Faults()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> "MirrorServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _list(self, query: dict[str, list[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        start = query.get("continuation-token", [""])[0]
        parent, _, stem = prefix.rpartition("/")
        folder = self.root / parent
        names = sorted(f"{parent}/{p.name}/" if parent else f"{p.name}/" for p in folder.iterdir()
                       if p.is_dir() and p.name.startswith(stem)) if folder.is_dir() else []
        names = [n for n in names if n > start]
        page, more = names[: self.page_size], len(names) > self.page_size
        items = "".join(f"<CommonPrefixes><Prefix>{escape(n)}</Prefix></CommonPrefixes>" for n in page)
        token = f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>" if more else ""
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}"><Name>pmc-oa-opendata</Name>'
                f"<Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{token}{items}</ListBucketResult>").encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                key = unquote(url.path.lstrip("/"))
                faults = server.faults
                faults.requests.append(key or "?list")
                faults.times.append(time.monotonic())
                time.sleep(faults.latency + faults.delays.get(key, 0.0))
                if faults.take(faults.resets, key):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees a reset / empty reply
                    return
                pending = server.faults.statuses.get(key)
                if pending:
                    status = pending.pop(0)
                    self._send(status, b"fault", {"Retry-After": server.faults.retry_after})
                    return
                if not key:
                    self._send(200, server._list(parse_qs(url.query)), {"Content-Type": "application/xml"})
                    return
                path = (server.root / key).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self._send(404, b"NoSuchKey")
                    return
                body = path.read_bytes()
                if key in server.faults.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if faults.take(faults.truncations, key):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self._send(200, body)

        return Handler


def serve_forever(root: Path, latency: float, url_file: Path, times_file: Path) -> None:
    """Serve ``root`` until SIGTERM, then write the request arrival times (a benchmark's own server process)."""
    import json
    import signal

    with MirrorServer(root) as server:
        server.faults.latency = latency
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        url_file.write_text(server.url)
        stop.wait()
        times_file.write_text(json.dumps(server.faults.times))


if __name__ == "__main__":
    import sys

    serve_forever(Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
