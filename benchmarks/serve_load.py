"""A bounded load test of the served model: concurrent clients, attacks mixed in, RSS watched.

Starts ``mlflow models serve`` on loopback for a registered model (default: the champion in this
project's ``mlflow.db``, so run ``make run`` first), measures one client's latency alone (the
baseline), then ``--clients`` concurrent clients send ``--requests`` requests of which every
``--attack-every``-th is an attack (a 20 KB PNG declaring 13,000 × 13,000 pixels, or a server file
path). Prints one JSON line: p50/p99 latency of the valid requests under load and alone, their
ratio, status codes per kind, whether the server survived, and its peak RSS (process tree).

    .venv/bin/python benchmarks/serve_load.py [--clients 32] [--requests 320] [--model-uri URI]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.net import free_port  # noqa: E402


def serve(model_uri: str, tracking_uri: str, cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve`` on loopback, once it answers /ping; returns the process and its URL. Its
    output goes to ``log`` (a pipe nobody reads would fill up and stall it)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                   "local", "-h", "127.0.0.1", "-p", str(port)], cwd=cwd, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(1)
    server.terminate()
    server.wait(timeout=30)
    raise RuntimeError(f"the model server did not come up: {log.read_text(errors='replace')[-3000:]}")


def bomb_png() -> str:
    buf = io.BytesIO()
    Image.new("1", (13_000, 13_000)).save(buf, format="PNG")  # 20 KB, 169 megapixels
    return base64.b64encode(buf.getvalue()).decode()


class RssWatch:
    """The peak resident memory of a process and its children, sampled every ``period`` seconds
    (``peak``), and the sum of each one's own peak as the kernel recorded it (``high_water``: exact
    per process, so no spike between samples escapes it; an upper bound of the tree's peak)."""

    def __init__(self, pid: int, period: float = 0.2):
        self._proc, self._period, self.peak = psutil.Process(pid), period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        """Take one sample now; returns the peak so far."""
        try:
            tree = [self._proc, *self._proc.children(recursive=True)]
            self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        return self.peak

    def high_water(self) -> int:
        total = 0
        try:
            for proc in [self._proc, *self._proc.children(recursive=True)]:
                status = Path(f"/proc/{proc.pid}/status")
                hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
                total += int(hwm[0].split()[1]) * 1024 if hwm else proc.memory_info().rss
        except (OSError, psutil.Error):
            pass
        return max(total, self.peak)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._period)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # valid requests only
    statuses: Counter[str] = field(default_factory=Counter)  # "<kind>:<status>"

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def load(url: str, image_b64: str, attacks: dict[str, str], clients: int, total: int, attack_every: int,
         labels: list[str]) -> LoadResult:
    """``total`` requests from ``clients`` threads; every ``attack_every``-th is one of ``attacks``."""
    result, lock = LoadResult(), threading.Lock()
    attack_kinds = list(attacks)

    def one(index: int) -> None:
        if attack_every and index % attack_every == attack_every - 1:
            kind = attack_kinds[index // attack_every % len(attack_kinds)]
            body = {"dataframe_split": {"columns": ["image"], "data": [[attacks[kind]]] * 4}}
        else:
            kind = "valid"
            body = {"dataframe_split": {"columns": ["image"], "data": [[image_b64]]},
                    "params": {"candidate_labels": labels}}
        t0 = time.perf_counter()
        try:
            status = str(requests.post(f"{url}/invocations", json=body, timeout=120).status_code)
        except requests.RequestException as exc:
            status = type(exc).__name__
        elapsed = (time.perf_counter() - t0) * 1000
        with lock:
            result.statuses[f"{kind}:{status}"] += 1
            if kind == "valid" and status == "200":
                result.latencies_ms.append(elapsed)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--attack-every", type=int, default=8)
    ap.add_argument("--model-uri", default="models:/biomedclip-factory@champion")
    ap.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    ap.add_argument("--image", type=Path, default=next((ROOT / "data/pairs/images").glob("*.jpg"), None))
    args = ap.parse_args()
    if args.image is None:
        sys.exit("serve_load: no image to send (run `make run` first, or pass --image)")
    image = base64.b64encode(args.image.read_bytes()).decode()
    labels = ["a chest x-ray", "a brain MRI", "a bar chart"]
    log = Path(tempfile.mkdtemp(prefix="serve_load.")) / "server.log"
    server, url = serve(args.model_uri, args.tracking_uri, ROOT, log)
    try:
        alone = load(url, image, {}, 1, 20, 0, labels)
        with RssWatch(server.pid) as rss:
            loaded = load(url, image, {"bomb": bomb_png(), "path": str(args.image)}, args.clients, args.requests,
                          args.attack_every, labels)
        alive, high_water = server.poll() is None, rss.high_water()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"benchmark": "serve_load", "baseline": "one client alone, same server, same request",
                      "ratio": round(loaded.percentile(0.99) / alone.percentile(0.5), 1),
                      "clients": args.clients, "requests": args.requests, "server_alive": alive,
                      "statuses": dict(loaded.statuses), "peak_rss_mb": round(rss.peak / 2**20),
                      "high_water_rss_mb": round(high_water / 2**20),
                      "latency_ms": {"p50": round(loaded.percentile(0.5)), "p99": round(loaded.percentile(0.99)),
                                     "alone_p50": round(alone.percentile(0.5)),
                                     "mean": round(statistics.fmean(loaded.latencies_ms or [float("nan")]))}}))


if __name__ == "__main__":
    main()
