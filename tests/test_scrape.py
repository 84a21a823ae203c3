"""Scrape from a real HTTP server in the PMC Cloud layout, with faults injected."""
from __future__ import annotations

import json
import shutil

import pytest

from biomedclip_factory.errors import ArticleError, SourceError
from biomedclip_factory.pmc.bucket import HttpBucket, LocalBucket, open_bucket
from biomedclip_factory.pmc.metadata import SelectionPolicy, parse_metadata
from biomedclip_factory.pmc.scrape import CloudSource, scrape

from .conftest import SAMPLE_MIRROR, run_stage
from .s3_mirror import MirrorServer

COMMERCIAL = SelectionPolicy.named("commercial")
ARTICLES = sorted(p.name for p in SAMPLE_MIRROR.iterdir() if p.name.startswith("PMC"))


@pytest.fixture()
def server():
    with MirrorServer(SAMPLE_MIRROR, page_size=5) as srv:
        yield srv


def _fast(url: str) -> HttpBucket:
    return HttpBucket(url, timeout=5, retries=3, backoff=0.01)


def _cloud(url: str) -> CloudSource:
    return CloudSource(_fast(url))


def test_http_listing_paginates_and_matches_local(server):
    assert list(_fast(server.url).list_prefixes()) == ARTICLES == list(LocalBucket(SAMPLE_MIRROR).list_prefixes())
    assert server.faults.requests.count("?list") == len(ARTICLES) // 5 + 1


def test_http_and_local_scrape_give_identical_files(server, tmp_path):
    via_http = scrape(_cloud(server.url), tmp_path / "http", COMMERCIAL, progress=False)
    via_disk = scrape(CloudSource(open_bucket(str(SAMPLE_MIRROR))), tmp_path / "disk", COMMERCIAL, progress=False)
    assert via_http.rows == via_disk.rows and via_http.count("ok") == len(ARTICLES)
    for f in (p for p in (tmp_path / "http").rglob("*") if p.is_file()):
        assert f.read_bytes() == (tmp_path / "disk" / f.relative_to(tmp_path / "http")).read_bytes()


def test_rerun_fetches_nothing_and_repairs_a_damaged_file(server, tmp_path):
    first = scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False)
    assert first.fetched_bytes > 0
    assert scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False).fetched_bytes == 0
    image = tmp_path / "PMC2924383.1" / "pone.0012255.g001.jpg"
    image.write_bytes(b"half a file")
    again = scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False)
    assert again.fetched_bytes == (SAMPLE_MIRROR / "PMC2924383.1" / image.name).stat().st_size
    assert image.read_bytes() == (SAMPLE_MIRROR / "PMC2924383.1" / image.name).read_bytes()


def test_transient_errors_retry_and_honour_retry_after(server, tmp_path):
    key = "PMC3532326.1/1756-0500-5-615-1.jpg"
    server.faults.statuses[key] = [503, 429, 500]
    server.faults.retry_after = "2"
    waits: list[float] = []
    bucket = HttpBucket(server.url, timeout=5, retries=3, backoff=0.01, sleep=waits.append)
    result = scrape(CloudSource(bucket), tmp_path, COMMERCIAL, progress=False)
    assert result.count("ok") == len(ARTICLES)
    assert server.faults.requests.count(key) == 4
    assert waits == [2.0, 2.0, 2.0]  # each fault answer said Retry-After: 2, and it was obeyed


def _ok_except(result, prefix: str | None = None) -> dict:
    rows = {r["prefix"]: r for r in result.lines()}
    assert all(r["status"] == "ok" for p, r in rows.items() if p != prefix), "a good article was lost"
    return rows


def test_connection_resets_and_truncated_bodies_are_retried(server, tmp_path):
    reset, cut = "PMC2924383.1/pone.0012255.g002.jpg", "PMC2958805.1/PMC2958805.1.xml"
    server.faults.resets[reset] = 2
    server.faults.truncations[cut] = 1
    _ok_except(scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False))
    assert server.faults.requests.count(reset) == 3 and server.faults.requests.count(cut) == 2
    assert (tmp_path / "PMC2958805.1" / "PMC2958805.1.xml").read_bytes() == \
        (SAMPLE_MIRROR / "PMC2958805.1" / "PMC2958805.1.xml").read_bytes()


def test_persistent_faults_fail_only_their_article_with_the_reason(server, tmp_path):
    server.faults.resets["PMC2924383.1/pone.0012255.g002.jpg"] = 99
    server.faults.truncations["PMC2958805.1/PMC2958805.1.xml"] = 99
    server.faults.delays["PMC3532326.1/PMC3532326.1.xml"] = 1.5  # beyond the 0.5 s timeout, every time
    bucket = HttpBucket(server.url, timeout=0.5, retries=2, backoff=0.01)
    result = scrape(CloudSource(bucket), tmp_path, COMMERCIAL, progress=False)
    rows = {r["prefix"]: r for r in result.lines()}
    assert "ConnectionError" in rows["PMC2924383.1"]["error"]
    assert "gave up after 3 attempts" in rows["PMC2924383.1"]["error"]
    assert "IncompleteRead" in rows["PMC2958805.1"]["error"]  # the body stopped short of its Content-Length
    assert "ReadTimeout" in rows["PMC3532326.1"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(ARTICLES) - 3
    assert not (tmp_path / "PMC2958805.1" / "PMC2958805.1.xml").exists()  # never a half file under its name


def test_a_bad_night_keeps_the_last_good_fetch_of_what_it_could_not_fetch_again(server, tmp_path):
    """Each night reads every version's metadata again: a server that fails one of them must not drop an
    article already fetched whole (align would train on less), but one whose files are gone is failed."""
    first = scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False)
    before = {r.prefix: r for r in first.rows}
    for prefix in ("PMC2924383.1", "PMC3532326.1"):
        server.faults.statuses[f"{prefix}/{prefix}.json"] = [503] * 10  # past every retry
    (tmp_path / "PMC3532326.1" / "1756-0500-5-615-1.jpg").unlink()
    bucket = HttpBucket(server.url, timeout=5, retries=1, backoff=0.01)
    night = scrape(CloudSource(bucket), tmp_path, COMMERCIAL, progress=False, previous=first.rows)
    rows = {r.prefix: r for r in night.rows}
    assert rows["PMC2924383.1"] == before["PMC2924383.1"]  # the same line: align reuses its work
    assert list(night.kept_after_failure) == ["PMC2924383.1"] and "503" in night.kept_after_failure["PMC2924383.1"]
    assert rows["PMC3532326.1"].status == "failed" and "503" in rows["PMC3532326.1"].error
    assert night.count("ok") == len(ARTICLES) - 1


def test_the_rate_limit_holds_across_workers(server, tmp_path):
    bucket = HttpBucket(server.url, timeout=5, retries=1, backoff=0.01, rate_limit=40)
    result = scrape(CloudSource(bucket), tmp_path, COMMERCIAL, workers=8, progress=False)
    assert result.count("ok") == len(ARTICLES)
    times = sorted(server.faults.times)
    assert len(times) > 40
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 41  # 40 per second plus the one token the bucket starts with


def test_wrong_md5_fails_only_that_article(server, tmp_path):
    server.faults.corrupt.add("PMC2958805.1/pcbi.1000960.g002.jpg")
    result = scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False)
    bad = [r for r in result.lines() if r["status"] == "failed"]
    assert [r["prefix"] for r in bad] == ["PMC2958805.1"] and "md5 mismatch" in bad[0]["error"]
    assert result.count("ok") == len(ARTICLES) - 1
    assert not (tmp_path / "PMC2958805.1" / "pcbi.1000960.g002.jpg").exists()


def test_persistent_404_and_malformed_metadata_are_recorded(server, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    (mirror / "PMC3166277.1" / "PMC3166277.1.json").write_text("{not json")
    (mirror / "PMC2924383.1" / "pone.0012255.g003.jpg").unlink()
    odd = mirror / "PMC3532326.1" / "PMC3532326.1.json"  # a field of another type: one article's problem
    odd.write_text(json.dumps({**json.loads(odd.read_text()), "license_code": ["CC BY"]}))
    with MirrorServer(mirror) as srv:
        rows = {r["prefix"]: r for r in scrape(_cloud(srv.url), tmp_path / "raw", COMMERCIAL, progress=False).lines()}
    assert "malformed metadata JSON" in rows["PMC3166277.1"]["error"]
    assert "HTTP 404" in rows["PMC2924383.1"]["error"]
    assert "metadata 'license_code' is list ['CC BY'], not str" in rows["PMC3532326.1"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(ARTICLES) - 3


@pytest.mark.parametrize("field, value", [("license_code", ["CC BY"]), ("is_retracted", "false"),
                                          ("media_urls", "s3://pmc-oa-opendata/x.jpg"), ("media_urls", [{"u": 1}]),
                                          ("xml_url", 7)])
def test_metadata_of_the_wrong_shape_is_that_article_s_error(field, value):
    """Every field a scrape reads is checked before use: a TypeError from one article's JSON would end the run."""
    meta = json.loads(next(SAMPLE_MIRROR.glob("PMC*/PMC*.json")).read_bytes())
    with pytest.raises(ArticleError, match="^a.json: "):
        parse_metadata(json.dumps({**meta, field: value}).encode(), "a.json")


def test_licence_policy_and_retraction(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    meta_file = mirror / "PMC3532326.1" / "PMC3532326.1.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "is_retracted": True}))
    rows = {r["prefix"]: r for r in scrape(CloudSource(LocalBucket(mirror)), tmp_path / "raw",
                                          SelectionPolicy.named(["CC0"]), progress=False).lines()}
    assert rows["PMC3532326.1"]["status"] == "skipped:retracted"
    assert rows["PMC12330557.1"]["status"] == "ok" and rows["PMC12330557.1"]["license_code"] == "CC0"
    assert rows["PMC2924383.1"]["status"] == "skipped:licence_excluded:CC BY"
    assert not (tmp_path / "raw" / "PMC2924383.1").exists()


def test_unreachable_source_is_a_clear_error():
    with pytest.raises(SourceError, match="GET http://127.0.0.1:9/"):
        list(HttpBucket("http://127.0.0.1:9", timeout=1, retries=0).list_prefixes())
    with pytest.raises(SourceError, match="source folder not found"):
        open_bucket("no/such/mirror")


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_9_mid_scrape_then_rerun_gives_the_same_result(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from .conftest import make_project, project_env, stage_command

    with MirrorServer(SAMPLE_MIRROR) as srv:
        params = {"scrape": {"source": srv.url, "workers": 2, "rate_limit": 0}}
        straight, killed = make_project(tmp_path / "a", params), make_project(tmp_path / "b", params)
        run_stage(straight, "scrape")
        srv.faults.latency = 0.1  # the killed run slow enough to be caught in the middle
        proc = subprocess.Popen(stage_command(killed, "scrape"), cwd=killed, env=project_env(killed),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raw = killed / "data" / "raw"
        deadline = time.monotonic() + 120
        while len(list(raw.rglob("*.jpg"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (raw / "manifest.jsonl").exists(), "killed too late to test anything"
        srv.faults.latency = 0.0
        run_stage(killed, "scrape")
    assert _tree(raw) == _tree(straight / "data" / "raw")  # interrupted temp files swept, the rest completed


def test_malformed_listings_are_clear_source_errors(tmp_path):
    class BrokenListing(MirrorServer):
        def _list(self, query):  # an S3 front end answering garbage
            return b"<ListBucketResult><CommonPrefixes><Prefix>PMC1.1/"

    with BrokenListing(SAMPLE_MIRROR) as srv, pytest.raises(SourceError, match="malformed ListObjectsV2 XML"):
        scrape(_cloud(srv.url), tmp_path, COMMERCIAL, progress=False)


def test_what_a_killed_run_half_wrote_is_swept_when_the_article_is_fetched_again(server, tmp_path):
    article = tmp_path / "PMC2924383.1"
    article.mkdir()
    (article / ".pone.0012255.g001.jpg.k3j2.tmp").write_bytes(b"half")
    (tmp_path / ".PMC3532326.1.x8a1.tmp").mkdir()  # a package extraction's staging dir
    (tmp_path / ".PMC3532326.1.x8a1.tmp" / "fig.jpg").write_bytes(b"half")
    (tmp_path / ".notes.txt.tmp").write_text("not ours: left alone")
    _ok_except(scrape(_cloud(server.url), tmp_path, COMMERCIAL, progress=False))
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".notes.txt.tmp"]
    assert not list(article.glob(".*"))


def test_a_manifest_line_reads_back_as_written_and_keeps_its_contract(tmp_path):
    """The align journal keys each article's reuse on its manifest line's digest: a key added, dropped or
    renamed would re-align the whole corpus, so the fields are pinned here."""
    from biomedclip_factory.errors import DataError
    from biomedclip_factory.pmc.manifest import ManifestRow, iter_manifest
    from biomedclip_factory.pmc.scrape import previous_manifest, write_manifest

    mirror = tmp_path / "mirror"
    shutil.copytree(SAMPLE_MIRROR, mirror)
    (mirror / ARTICLES[0] / f"{ARTICLES[0]}.json").write_text("{not json")
    result = scrape(CloudSource(LocalBucket(mirror)), tmp_path / "raw", SelectionPolicy.named(["CC0"]), progress=False)
    write_manifest(tmp_path / "raw", result, {"source": "test"})
    assert list(iter_manifest(tmp_path / "raw")) == result.rows
    assert [ManifestRow.from_row(line).row() for line in result.lines()] == list(result.lines())
    keys = {row.status.split(":")[0]: set(line) for row, line in zip(result.rows, result.lines())}
    assert keys["ok"] == {"prefix", "pmcid", "version", "pmid", "license_code", "is_retracted", "files", "status"}
    assert keys["skipped"] == keys["ok"]
    assert keys["failed"] == {"prefix", "pmcid", "files", "status", "error"}  # it failed before its metadata
    with pytest.raises(DataError, match="no prefix or status"):
        ManifestRow.from_row({"pmcid": "PMC1"})
    manifest = tmp_path / "raw" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:1] + ['{"pmcid": "PMC1"}'] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"raw/manifest.jsonl: manifest line .*no prefix or status"):
        list(iter_manifest(tmp_path / "raw"))
    manifest.write_text("\n".join(lines[:1] + ["{half a line"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"raw/manifest.jsonl:2: not a JSON line"):
        list(iter_manifest(tmp_path / "raw"))
    assert previous_manifest(tmp_path / "raw", {"source": "test"}) is None  # the next run lists the source again
