"""Incremental scraping from the daily S3 inventory: only changed versions fetched, superseded and
retracted versions removed, and the result equal to a fresh run."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from biomedclip_factory.io import read_jsonl
from biomedclip_factory.pmc.bucket import HttpBucket
from biomedclip_factory.pmc.inventory import INVENTORY_PREFIX, InventorySource, latest_inventory
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import scrape
from biomedclip_factory.pmc.versions import newest_versions

from .conftest import SAMPLE_MIRROR, make_project, run_stage
from .s3_mirror import MirrorServer

POLICY = SelectionPolicy.named("commercial")
ARTICLES = sorted(p.name for p in SAMPLE_MIRROR.iterdir() if p.name.startswith("PMC"))


def write_inventory(mirror: Path, date: str, stamps: dict[str, str]) -> None:
    """An S3 inventory in PMC's format: manifest.json → two gzip CSV parts without a header."""
    folder = mirror / INVENTORY_PREFIX / date
    (folder / "data").mkdir(parents=True)
    rows = [f'"pmc-oa-opendata","metadata/{prefix}.json","{stamp}","etag{i}"'
            for i, (prefix, stamp) in enumerate(sorted(stamps.items()))]
    rows.append('"pmc-oa-opendata","PMC1.1/PMC1.1.xml","2026-01-01T00:00:00.000Z","x"')  # not metadata: ignored
    parts = []
    for n, chunk in enumerate((rows[::2], rows[1::2])):
        key = f"{INVENTORY_PREFIX}{date}/data/part-{n}.csv.gz"
        (mirror / key).write_bytes(gzip.compress(("\n".join(chunk) + "\n").encode()))
        parts.append({"key": key, "size": 1})
    (folder / "manifest.json").write_text(json.dumps({"sourceBucket": "pmc-oa-opendata", "files": parts}))


def new_version(mirror: Path, prefix: str) -> str:
    """Publish version N+1 of ``prefix`` (a correction): same files, its own metadata."""
    pmcid, version = prefix.split(".")
    newer = f"{pmcid}.{int(version) + 1}"
    shutil.copytree(mirror / prefix, mirror / newer)
    (mirror / newer / f"{prefix}.xml").rename(mirror / newer / f"{newer}.xml")
    (mirror / newer / f"{prefix}.json").unlink()
    meta = json.loads((mirror / prefix / f"{prefix}.json").read_text().replace(f"{prefix}/", f"{newer}/")
                      .replace(f"{prefix}.xml", f"{newer}.xml"))
    (mirror / newer / f"{newer}.json").write_text(json.dumps({**meta, "version": int(version) + 1}))
    return newer


def test_only_changed_versions_are_fetched_and_stale_ones_leave(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    day1 = {p: "2026-11-01T10:00:00.000Z" for p in ARTICLES}
    write_inventory(mirror, "2026-11-27T01-00Z", day1)
    raw = tmp_path / "raw"
    with MirrorServer(mirror) as server:
        bucket = HttpBucket(server.url, timeout=5, retries=1, backoff=0.01)
        assert latest_inventory(bucket) == f"{INVENTORY_PREFIX}2026-11-27T01-00Z"
        first = scrape(InventorySource(bucket), raw, POLICY, progress=False)
        assert first.fetched_articles == first.count("ok") == len(ARTICLES)

        server.faults.requests.clear()
        again = scrape(InventorySource(bucket), raw, POLICY, progress=False, previous=first.rows)
        assert again.fetched_articles == 0 and again.fetched_bytes == 0 and again.rows == first.rows
        assert not [k for k in server.faults.requests if k.startswith("PMC")]  # not one article request

        # A day later: PMC3532326 is corrected (version 2), PMC2924383 is retracted.
        newer = new_version(mirror, "PMC3532326.1")
        meta_file = mirror / "PMC2924383.1" / "PMC2924383.1.json"
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "is_retracted": True}))
        day2 = {**day1, newer: "2026-11-28T09:00:00.000Z", "PMC2924383.1": "2026-11-28T09:30:00.000Z"}
        write_inventory(mirror, "2026-11-28T01-00Z", day2)
        update = scrape(InventorySource(bucket), raw, POLICY, progress=False, previous=again.rows)
        fresh = scrape(InventorySource(bucket), tmp_path / "fresh", POLICY, progress=False)

    assert update.fetched_articles == 2  # the new version and the retracted one; nothing else
    rows = {r["prefix"]: r for r in update.lines()}
    assert rows["PMC3532326.1"]["status"] == "skipped:superseded" and rows["PMC3532326.1"]["superseded_by"] == newer
    assert rows[newer]["status"] == "ok" and rows["PMC2924383.1"]["status"] == "skipped:retracted"
    assert sorted(update.removed) == ["PMC2924383.1", "PMC3532326.1"]
    assert not (raw / "PMC3532326.1").exists() and not (raw / "PMC2924383.1").exists()
    assert update.rows == fresh.rows  # incremental == from scratch, files too
    files = sorted(str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(tmp_path / "fresh")) for p in (tmp_path / "fresh").rglob("*") if p.is_file())


def test_newest_version_wins_whatever_the_order():
    kept, superseded = newest_versions(["PMC1.2", "PMC2.1", "PMC1.10", "PMC1.3", "oa_file_list.csv:8"])
    assert kept == ["PMC2.1", "PMC1.10", "oa_file_list.csv:8"]
    assert superseded == {"PMC1.2": "PMC1.10", "PMC1.3": "PMC1.10"}


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_the_stage_reruns_incrementally_from_its_persisted_state(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    write_inventory(mirror, "2026-11-27T01-00Z", {p: "2026-11-01T10:00:00.000Z" for p in ARTICLES})
    project = make_project(tmp_path / "p", {"scrape": {"source": str(mirror), "layout": "inventory"}})
    run_stage(project, "scrape")
    first = json.loads((project / "metrics/scrape.json").read_text())
    run_stage(project, "scrape")
    second = json.loads((project / "metrics/scrape.json").read_text())
    assert first["articles_fetched"] == len(ARTICLES) and second["articles_fetched"] == 0
    assert second["watermark"] == "2026-11-01T10:00:00.000Z" and second["articles_ok"] == first["articles_ok"]
    state = json.loads((project / "data/raw/state.json").read_text())
    assert state["selection"]["layout"] == "inventory"
    assert len(read_jsonl(project / "data/raw/manifest.jsonl")) == len(ARTICLES)


def test_a_date_window_selects_on_each_versions_last_change(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    old, recent = ARTICLES[::2], ARTICLES[1::2]
    write_inventory(mirror, "2026-11-27T01-00Z", {**{p: "2026-10-01T08:00:00.000Z" for p in old},
                                                  **{p: "2026-11-20T08:00:00.000Z" for p in recent}})
    with MirrorServer(mirror) as server:
        bucket = HttpBucket(server.url, timeout=5, retries=1, backoff=0.01)
        result = scrape(InventorySource(bucket), tmp_path / "raw", POLICY, progress=False, window=("2026-11-01", None))
    rows = {r["prefix"]: r for r in result.lines()}
    assert {p for p, r in rows.items() if r["status"] == "ok"} == set(recent)
    assert {p for p, r in rows.items() if r["status"] == "skipped:outside_date_window"} == set(old)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(recent)


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_a_date_window_needs_a_dated_layout(tmp_path):
    project = make_project(tmp_path / "p", {"scrape": {"since": "2026-01-01"}})
    proc = run_stage(project, "scrape", check=False)
    assert proc.returncode == 2 and "'scrape.since'/'scrape.until' need layout inventory or legacy" in proc.stderr
    project = make_project(tmp_path / "q", {"scrape": {"layout": "inventory", "until": "Jan 1st"}})
    proc = run_stage(project, "scrape", check=False)
    assert proc.returncode == 2 and "'scrape.until' must be a date YYYY-MM-DD" in proc.stderr


def test_a_malformed_inventory_is_a_clear_source_error(tmp_path):
    import pytest

    from biomedclip_factory.errors import SourceError
    from biomedclip_factory.pmc.bucket import LocalBucket

    mirror = tmp_path / "mirror"
    write_inventory(mirror, "2026-11-27T01-00Z", {"PMC1.1": "2026-11-01T10:00:00.000Z"})
    manifest = mirror / INVENTORY_PREFIX / "2026-11-27T01-00Z" / "manifest.json"
    manifest.write_text('{"files": [')
    with pytest.raises(SourceError, match="manifest.json: not an S3 inventory manifest"):
        list(InventorySource(LocalBucket(mirror)).items())
    manifest.write_text(json.dumps({"files": [{"key": f"{INVENTORY_PREFIX}2026-11-27T01-00Z/manifest.json"}]}))
    with pytest.raises(SourceError, match="unreadable inventory part"):
        list(InventorySource(LocalBucket(mirror)).items())
    with pytest.raises(SourceError, match="no inventory under"):
        latest_inventory(LocalBucket(tmp_path))
