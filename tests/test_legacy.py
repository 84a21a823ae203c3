"""The legacy layout: oa_file_list + oa_package tar.gz mirror over real HTTP, through to aligned pairs."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from biomedclip_factory.corpus.align_config import AlignConfig
from biomedclip_factory.corpus.assemble import align_corpus
from biomedclip_factory.errors import SourceError
from biomedclip_factory.io import read_jsonl
from biomedclip_factory.pmc.bucket import HttpBucket
from biomedclip_factory.pmc.legacy import BadLine, LegacyEntry, LegacySource, parse_file_list
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import scrape

from .conftest import SAMPLE_MIRROR, make_project, run_stage
from .s3_mirror import MirrorServer

HEADER = "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\n"
ARTICLES = ["PMC2924383.1", "PMC3532326.1", "PMC2958805.1"]
CFG = AlignConfig(max_side=128, jpeg_quality=85, min_caption_chars=20, min_side=32,
                  split_ratios={"train": 0.7, "test": 0.3})


def _package(article: Path, top: str) -> bytes:
    """A package in the legacy layout, from a real sample article: top folder, .nxml, figures, a PDF."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [(f.name.replace(f"{article.name}.xml", "article.nxml"), f.read_bytes())
                           for f in sorted(article.iterdir()) if not f.name.endswith(".json")] + [
                ("article.pdf", b"%PDF-1.4 not kept"), ("license.txt", b"CC BY")]:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _evil_package() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("top/../../../escaped.nxml")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"<a/>"[:3]))
    return buf.getvalue()


def legacy_mirror(root: Path, updated: str = "2019-11-05 11:56:12") -> Path:
    rows = []
    for i, prefix in enumerate(ARTICLES):
        pmcid = prefix.split(".")[0]
        meta = json.loads((SAMPLE_MIRROR / prefix / f"{prefix}.json").read_text())
        key = f"oa_package/0{i}/a{i}/{pmcid}.tar.gz"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(_package(SAMPLE_MIRROR / prefix, f"Journal_{pmcid}"))
        rows.append(f'{key},"Some J. 2010; 5(8):e1",{pmcid},{updated},{meta.get("pmid") or ""},{meta["license_code"]}')
    (root / "oa_package/ff/ff/PMC13900.tar.gz").parent.mkdir(parents=True)
    (root / "oa_package/ff/ff/PMC13900.tar.gz").write_bytes(b"only the list knows this one")
    rows.append("oa_package/ff/ff/PMC13900.tar.gz,Breast Cancer Res. 2001,PMC13900,2019-11-05 11:56:12,11250746,NO-CC CODE")
    rows.append("oa_package/ee/ee/PMC777.tar.gz,Evil J.,PMC777,2019-11-05 11:56:12,,CC BY")
    (root / "oa_package/ee/ee/PMC777.tar.gz").parent.mkdir(parents=True)
    (root / "oa_package/ee/ee/PMC777.tar.gz").write_bytes(_evil_package())
    rows.append("oa_package/dd/dd/PMC888.tar.gz,Gone J.,PMC888,2019-11-05 11:56:12,,CC0")  # listed, not mirrored
    rows.append("oa_package/xx/PMCbad.tar.gz,Bad row,not-an-id,2019-11-05 11:56:12,,CC BY")
    (root / "oa_file_list.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return root


@pytest.fixture()
def mirror(tmp_path):
    with MirrorServer(legacy_mirror(tmp_path / "mirror")) as server:
        yield server


def _source(url: str) -> LegacySource:
    return LegacySource(HttpBucket(url, timeout=5, retries=1, backoff=0.01))


def test_legacy_packages_become_article_versions_that_align(mirror, tmp_path):
    result = scrape(_source(mirror.url), tmp_path / "raw", SelectionPolicy.named("commercial"), progress=False)
    rows = {r["prefix"]: r for r in result.lines()}
    assert {p for p, r in rows.items() if r["status"] == "ok"} == {"PMC2924383.0", "PMC3532326.0", "PMC2958805.0"}
    assert rows["PMC13900.0"]["status"] == "skipped:licence_excluded:NO-CC CODE"
    assert "points outside the package" in rows["PMC777.0"]["error"]
    assert "HTTP 404" in rows["PMC888.0"]["error"]
    assert rows["oa_file_list.csv:8"] == {"prefix": "oa_file_list.csv:8", "status": "failed", "files": [],
                                          "error": "bad accession id 'not-an-id'"}
    assert not list(tmp_path.rglob("escaped.nxml"))
    article = tmp_path / "raw" / "PMC3532326.0"
    assert sorted(p.name for p in article.iterdir()) == sorted(
        ["PMC3532326.0.xml", "PMC3532326.0.json", "1756-0500-5-615-1.jpg", "1756-0500-5-615-2.jpg"])
    meta = json.loads((article / "PMC3532326.0.json").read_text())
    assert meta["license_code"] == "CC BY" and meta["legacy_package"] == "oa_package/01/a1/PMC3532326.tar.gz"
    assert rows["PMC3532326.0"]["files"] == meta["files"]

    ok = sorted(p for p, r in rows.items() if r["status"] == "ok")
    pairs, rejects, figures = align_corpus(tmp_path / "raw", ok, tmp_path / "pairs", CFG, progress=False)
    assert figures >= 3 and pairs and {p.license_code for p in pairs} == {"CC BY"}
    assert {p.pmcid for p in pairs} == {"PMC2924383", "PMC3532326", "PMC2958805"}


def test_a_rerun_fetches_only_updated_packages(mirror, tmp_path):
    policy = SelectionPolicy.named("commercial")
    first = scrape(_source(mirror.url), tmp_path / "raw", policy, progress=False)
    assert first.fetched_bytes > 0
    again = scrape(_source(mirror.url), tmp_path / "raw", policy, progress=False, previous=first.rows)
    evil = (mirror.root / "oa_package/ee/ee/PMC777.tar.gz").stat().st_size
    assert again.fetched_bytes == evil and again.rows == first.rows  # only the failed one is tried again
    listing = mirror.root / "oa_file_list.csv"
    listing.write_text(listing.read_text().replace("PMC3532326,2019-11-05 11:56:12", "PMC3532326,2026-11-01 08:00:00"))
    mirror.faults.requests.clear()
    updated = scrape(_source(mirror.url), tmp_path / "raw", policy, progress=False, previous=again.rows)
    fetched = [k for k in mirror.faults.requests if k.endswith(".tar.gz")]
    assert sorted(fetched) == ["oa_package/01/a1/PMC3532326.tar.gz", "oa_package/dd/dd/PMC888.tar.gz",
                               "oa_package/ee/ee/PMC777.tar.gz"]  # the changed one, and the failures retried
    changed = mirror.root / "oa_package/01/a1/PMC3532326.tar.gz"  # requests arrive in any order (workers)
    assert updated.fetched_bytes == changed.stat().st_size + evil
    before, after = ({**r, "last_modified": None} for rows in (first.lines(), updated.lines()) for r in rows
                     if r["prefix"] == "PMC3532326.0")
    assert before == after  # the same files, now stamped with the new Last Updated
    assert next(r for r in updated.lines() if r["prefix"] == "PMC3532326.0")["last_modified"] == "2026-11-01 08:00:00"


def test_the_txt_file_list_and_bad_lists():
    txt = ("2019-11-05 11:56:12\n"
           "oa_package/08/e0/PMC13900.tar.gz\tBreast Cancer Res. 2001 Nov 2; 3(1):55-60\tPMC13900\tPMID:11250746\tCC BY\n"
           "oa_package/08/e1/PMC13901.tar.gz\tshort line\n")
    entries = parse_file_list(txt.encode(), "oa_file_list.txt")
    assert entries == [LegacyEntry("oa_package/08/e0/PMC13900.tar.gz", "PMC13900", 11250746, "CC BY", None),
                       BadLine("oa_file_list.txt:3", "2 fields, expected 5")]
    with pytest.raises(SourceError, match="oa_file_list.csv: expected the header"):
        parse_file_list(b"path,citation\n", "oa_file_list.csv")
    bad = parse_file_list((HEADER + "../../etc/passwd.tar.gz,x,PMC1,2019-01-01,,CC BY\n").encode(), "l.csv")
    assert bad == [BadLine("l.csv:2", "bad package path '../../etc/passwd.tar.gz'")]


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_the_scrape_stage_reads_a_legacy_mirror_from_params(tmp_path):
    mirror = legacy_mirror(tmp_path / "mirror")
    project = make_project(tmp_path / "p", {"scrape": {"source": str(mirror), "layout": "legacy"}})
    run_stage(project, "scrape")
    rows = read_jsonl(project / "data" / "raw" / "manifest.jsonl")
    assert sorted(r["prefix"] for r in rows if r["status"] == "ok") == ["PMC2924383.0", "PMC2958805.0", "PMC3532326.0"]
    metrics = json.loads((project / "metrics" / "scrape.json").read_text())
    assert metrics["articles_ok"] == 3 and metrics["articles_failed"] == 3 and metrics["articles_skipped"] == 1
