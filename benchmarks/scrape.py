"""Benchmark: our scraper vs a sequential one-request-at-a-time baseline, same loopback mirror.

A mirror of ``--articles`` article versions in the PMC Cloud layout (each a real sample article's
XML and two figures under a new PMCID, with its own metadata JSON and md5s) is served on
127.0.0.1 with ``--latency`` seconds added to every request, like a far-away server. The baseline
lists the mirror, then GETs each metadata JSON, XML and figure in turn, checks md5 and writes the
file — what PMC-15M's download script did. Ours is the scrape stage's code with ``--workers``
threads under a ``--rate-limit``. Prints the speed-up (target ≥ 20×) and the busiest one-second
request count seen by the server against the limit (must never exceed it).

    .venv/bin/python benchmarks/scrape.py [--articles 200] [--latency 0.05] [--workers 32] [--rate-limit 500]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.pmc.bucket import HttpBucket  # noqa: E402
from biomedclip_factory.pmc.metadata import SelectionPolicy, parse_metadata  # noqa: E402
from biomedclip_factory.pmc.scrape import CloudSource, scrape  # noqa: E402

TEMPLATE = ROOT / "sample" / "pmc-mirror" / "PMC3532326.1"


def build_mirror(root: Path, articles: int) -> None:
    files = {f.name: f.read_bytes() for f in TEMPLATE.iterdir() if not f.name.endswith(".json")}
    meta = json.loads((TEMPLATE / f"{TEMPLATE.name}.json").read_text())
    for i in range(articles):
        pmcid = f"PMC9{i:06d}"
        prefix = f"{pmcid}.1"
        (root / prefix).mkdir(parents=True)
        urls = {}
        for name, data in files.items():
            target = f"{prefix}.xml" if name.endswith(".xml") else name
            (root / prefix / target).write_bytes(data)
            urls[target] = f"s3://pmc-oa-opendata/{prefix}/{target}?md5={hashlib.md5(data).hexdigest()}"
        entry = {**meta, "pmcid": pmcid, "xml_url": urls.pop(f"{prefix}.xml"), "media_urls": sorted(urls.values())}
        (root / prefix / f"{prefix}.json").write_text(json.dumps(entry))


def sequential(url: str, out: Path) -> int:
    """The baseline: one request at a time, no retries, no concurrency."""
    session = requests.Session()
    from lxml import etree

    listing = etree.fromstring(session.get(f"{url}/", params={"list-type": "2", "delimiter": "/"}).content)
    prefixes = [e.text.rstrip("/") for e in listing.iter() if etree.QName(e).localname == "Prefix" and e.text]
    done = 0
    for prefix in prefixes:
        meta = parse_metadata(session.get(f"{url}/{prefix}/{prefix}.json").content, prefix)
        for remote in (meta.xml, *meta.media):
            data = session.get(f"{url}/{remote.key}").content
            assert hashlib.md5(data).hexdigest() == remote.md5
            (out / prefix).mkdir(parents=True, exist_ok=True)
            (out / prefix / remote.name).write_bytes(data)
        done += 1
    return done


@contextlib.contextmanager
def mirror_process(root: Path, latency: float, tmp: Path) -> Iterator[tuple[str, list[float]]]:
    """The mirror in its own process (a real server is not in the client's interpreter); yields its
    URL and, once it has stopped, the arrival times of every request it saw."""
    url_file, times_file = tmp / "url", tmp / "times.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "s3_mirror.py"), str(root), str(latency),
                             str(url_file), str(times_file)])
    times: list[float] = []
    try:
        while not url_file.is_file() or not url_file.read_text():
            if proc.poll() is not None:
                raise RuntimeError("the mirror server did not start")
            time.sleep(0.05)
        yield url_file.read_text(), times
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    times.extend(json.loads(times_file.read_text()))


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--rate-limit", type=float, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "mirror"
        build_mirror(mirror, args.articles)
        with mirror_process(mirror, args.latency, Path(tmp)) as (url, times):
            t0 = time.perf_counter()
            assert sequential(url, Path(tmp) / "seq") == args.articles
            baseline_s = time.perf_counter() - t0
            start = time.monotonic()
            bucket = HttpBucket(url, timeout=30, retries=3, rate_limit=args.rate_limit)
            t0 = time.perf_counter()
            result = scrape(CloudSource(bucket), Path(tmp) / "ours", SelectionPolicy.named("commercial"),
                            workers=args.workers, progress=False)
            ours_s = time.perf_counter() - t0
        ours_times = [t for t in times if t >= start]
        requests_made = len(ours_times)
        peak = busiest_second(ours_times)
        assert result.count("ok") == args.articles, result.rows[:3]
        shutil.rmtree(Path(tmp) / "seq")
    print(json.dumps({"benchmark": "scrape", "baseline": "sequential, one request at a time",
                      "articles": args.articles, "latency_s": args.latency, "workers": args.workers,
                      "baseline_s": round(baseline_s, 2), "ours_s": round(ours_s, 2),
                      "ratio": round(baseline_s / ours_s, 1), "target": 20,
                      "requests": requests_made, "mean_rate_per_s": round(requests_made / ours_s, 1),
                      "busiest_second": peak, "rate_limit": args.rate_limit,
                      "within_limit": peak <= args.rate_limit + 1}))


if __name__ == "__main__":
    main()
