"""What the Dask runner's Prefect bookkeeping costs: items/s through ``runner: dask`` against a real
Prefect server on loopback, vs the same items through the thread mapper (no Prefect).

Scrape and align with ``runner: dask`` (or a Dask scheduler address) run their per-article work
through ``task_runner.dask_map``: Prefect flow runs on a Dask cluster, ``DASK_CHUNK`` articles per
Prefect task run. Against a server every task run is several API calls and database rows, so the
rate the server sustains bounds a PMC-scale run (~8 M article versions). The work here is trivial
(the item itself), so the rate is the bookkeeping's ceiling. Prints one JSON line: items/s, task
runs/s, the days 8 M items would take at that rate, and the ratio to the thread mapper.

    .venv/bin/python benchmarks/prefect_tasks.py [--items 2000] [--workers 2] [--chunk N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.net import free_port  # noqa: E402

PMC_VERSIONS = 8_000_000


def identity(item: int) -> int:
    return item


def _rate(mapper, items: list[int]) -> float:
    t0 = time.perf_counter()
    results = list(mapper(identity, items))
    assert results == items, "the mapper lost or reordered items"
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=None, help="items per Prefect task run (default: DASK_CHUNK)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="prefect_tasks."))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_LOGGING_LEVEL="WARNING")
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        from biomedclip_factory.parallel import thread_map
        from biomedclip_factory.task_runner import DASK_CHUNK, dask_map

        chunk = args.chunk or DASK_CHUNK
        items = list(range(args.items))
        threads = _rate(thread_map(args.workers), items)
        dask = _rate(dask_map("bench", None, args.workers, chunk=chunk), items)
        task_runs = requests.post(f"{api}/task_runs/count", json={}, timeout=30).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(json.dumps({"benchmark": "prefect_tasks", "baseline": "thread mapper, no Prefect",
                      "ratio": round(dask / threads, 4), "items": args.items, "chunk": chunk,
                      "items_per_s": round(dask, 1), "task_runs_recorded": task_runs,
                      "task_runs_per_s": round(dask / chunk, 2), "baseline_items_per_s": round(threads, 1),
                      "days_for_8M_versions": round(PMC_VERSIONS / dask / 86400, 2)}))


if __name__ == "__main__":
    main()
