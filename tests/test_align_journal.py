"""The align journal: a killed run resumes, a grown corpus aligns only what is new, and either way
the result is what a cold run gives."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from biomedclip_factory.corpus.assemble import align_articles, align_corpus
from biomedclip_factory.corpus.journal import JOURNAL, AlignJournal, article_digest, settings_key
from biomedclip_factory.parallel import thread_map
from biomedclip_factory.pmc.bucket import LocalBucket
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import CloudSource, scrape

from .conftest import SAMPLE_MIRROR
from .test_align import CFG


class Killed(Exception):
    """Stands in for the run dying part-way."""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    rows = scrape(CloudSource(LocalBucket(SAMPLE_MIRROR)), out, SelectionPolicy.named("commercial"),
                  progress=False).lines()
    return out, {r["prefix"]: article_digest(r) for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="module")
def cold(raw, tmp_path_factory):
    """A cold run with no journal: the result every other run must give."""
    raw_dir, digests = raw
    out = tmp_path_factory.mktemp("cold")
    pairs, rejects, figures = align_corpus(raw_dir, list(digests), out, CFG, progress=False)
    return (pairs, rejects, figures), {p.image: (out / p.image).read_bytes() for p in pairs}


def recording(seen: list[str], die_after: int | None = None):
    """The default thread mapper, noting which articles it was given; optionally dying after some."""
    inner = thread_map(2)

    def mapper(fn, items):
        seen.extend(items)
        for done, result in enumerate(inner(fn, items)):
            if done == die_after:
                raise Killed
            yield result

    return mapper


def run(raw, out: Path, journal_root: Path, cfg=CFG, digests=None, seen=None, die_after=None):
    raw_dir, all_digests = raw
    digests = digests or all_digests
    journal = AlignJournal(journal_root, cfg, digests)
    result = align_corpus(raw_dir, list(digests), out, cfg, progress=False, journal=journal,
                          mapper=recording(seen if seen is not None else [], die_after))
    return result, {p.image: (out / p.image).read_bytes() for p in result[0]}


def test_a_killed_run_resumes_and_gives_the_cold_result(raw, cold, tmp_path):
    digests = raw[1]
    with pytest.raises(Killed):
        run(raw, tmp_path / "a", tmp_path / "journal", die_after=7)
    seen: list[str] = []
    assert run(raw, tmp_path / "b", tmp_path / "journal", seen=seen) == cold
    assert seen == list(digests)[7:]  # the 7 recorded before the kill are not aligned again
    seen.clear()
    assert run(raw, tmp_path / "c", tmp_path / "journal", seen=seen) == cold
    assert seen == []


def test_a_half_written_last_line_is_cut_and_that_article_aligned_again(raw, cold, tmp_path):
    run(raw, tmp_path / "a", tmp_path / "journal")
    path = next((tmp_path / "journal").glob(f"*/{JOURNAL}"))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])  # died writing line 20 of 21
    seen: list[str] = []
    assert run(raw, tmp_path / "b", tmp_path / "journal", seen=seen) == cold
    assert seen == [json.loads(line)["prefix"] for line in lines[-2:]]
    assert path.read_bytes().count(b"\n") == len(lines) and path.read_bytes().endswith(b"\n")


def test_a_grown_corpus_aligns_only_the_new_articles(raw, cold, tmp_path):
    digests = raw[1]
    first = dict(list(digests.items())[:12])
    run(raw, tmp_path / "a", tmp_path / "journal", digests=first)
    seen: list[str] = []
    assert run(raw, tmp_path / "b", tmp_path / "journal", seen=seen) == cold
    assert seen == list(digests)[12:]


def test_a_changed_article_is_aligned_again(raw, cold, tmp_path):
    digests = raw[1]
    run(raw, tmp_path / "a", tmp_path / "journal")
    changed = {**digests, "PMC2924383.1": "another-md5"}  # e.g. PMC re-issued a figure file
    seen: list[str] = []
    (pairs, rejects, figures), images = run(raw, tmp_path / "b", tmp_path / "journal", digests=changed, seen=seen)
    assert seen == ["PMC2924383.1"] and (pairs, rejects, figures) == cold[0] and images == cold[1]


def test_other_settings_start_a_fresh_journal_but_dedup_distance_does_not(raw, tmp_path):
    run(raw, tmp_path / "a", tmp_path / "journal")
    (first,) = (tmp_path / "journal").iterdir()
    seen: list[str] = []
    run(raw, tmp_path / "b", tmp_path / "journal", cfg=replace(CFG, near_duplicate_max_distance=4), seen=seen)
    assert seen == [] and [*(tmp_path / "journal").iterdir()] == [first]
    smaller = replace(CFG, max_side=96)
    assert settings_key(smaller) != settings_key(CFG)
    (pairs, _, _), _ = run(raw, tmp_path / "c", tmp_path / "journal", cfg=smaller, seen=seen)
    assert seen == list(raw[1]) and max(max(p.width, p.height) for p in pairs) == 96
    assert [d.name for d in (tmp_path / "journal").iterdir()] == [settings_key(smaller)]  # the old one is gone


def test_articles_no_longer_scraped_are_compacted_away_with_their_images(raw, tmp_path):
    digests = raw[1]
    run(raw, tmp_path / "a", tmp_path / "journal")
    (journal_dir,) = (tmp_path / "journal").iterdir()
    with_pairs = "PMC2924383.1"
    gone_images = sorted(journal_dir.glob(f"images/{with_pairs}_*.jpg"))
    assert gone_images
    withdrawn = [with_pairs, *[p for p in digests if p != with_pairs][:2]]
    kept = {p: d for p, d in digests.items() if p not in withdrawn}
    (pairs, _, _), _ = run(raw, tmp_path / "b", tmp_path / "journal", digests=kept)
    assert not any(p.pmcid == "PMC2924383" for p in pairs)
    rows = [json.loads(line) for line in (journal_dir / JOURNAL).read_text().splitlines()]
    assert [r["prefix"] for r in rows] == list(kept)  # 3 stale lines of 21: over the 10% that compacts
    assert not any(i.exists() for i in gone_images)
    again = {p: d for p, d in digests.items() if p != withdrawn[1]}
    seen: list[str] = []
    run(raw, tmp_path / "c", tmp_path / "journal", digests=again, seen=seen)
    assert sorted(seen) == sorted([with_pairs, withdrawn[2]])


def test_a_damaged_journal_or_a_lost_image_costs_time_not_the_result(raw, cold, tmp_path, capsys):
    run(raw, tmp_path / "a", tmp_path / "journal")
    (journal_dir,) = (tmp_path / "journal").iterdir()
    next(journal_dir.glob("images/PMC3532326.1_*.jpg")).unlink()
    seen: list[str] = []
    assert run(raw, tmp_path / "b", tmp_path / "journal", seen=seen) == cold
    assert seen == ["PMC3532326.1"]
    path = journal_dir / JOURNAL
    path.write_bytes(b"{not json\n" + path.read_bytes())
    seen.clear()
    assert run(raw, tmp_path / "c", tmp_path / "journal", seen=seen) == cold
    assert seen == list(raw[1]) and "is damaged" in capsys.readouterr().out


def test_the_pairs_folder_is_written_in_row_groups_and_holds_the_same_table(raw, cold, tmp_path):
    import pyarrow.parquet as pq

    from biomedclip_factory.corpus.records import Pair, Reject

    raw_dir, digests = raw
    corpus = align_articles(raw_dir, list(digests), CFG, AlignJournal(tmp_path / "journal", CFG, digests),
                            progress=False)
    stats = corpus.export(tmp_path / "out", row_group=4)
    table = pq.ParquetFile(tmp_path / "out" / "pairs.parquet")
    assert table.metadata.num_row_groups == 3 and stats.pairs == 10
    pairs = [Pair.from_row(row) for row in table.read().to_pylist()]
    assert pairs == cold[0][0] and [p.pair_id for p in pairs] == sorted(p.pair_id for p in pairs)
    assert {p.image: (tmp_path / "out" / p.image).read_bytes() for p in pairs} == cold[1]
    assert stats.by_split == {"train": 8, "test": 2} and sum(stats.per_article.values()) == 10
    rejects = [Reject.from_row(json.loads(line)) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    assert rejects == cold[0][1] and list(corpus.rejects()) == rejects


def test_record_outside_the_with_block_is_refused(raw, tmp_path):
    from biomedclip_factory.corpus.align import ArticleResult

    journal = AlignJournal(tmp_path / "journal", CFG, raw[1])
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        journal.record(next(iter(raw[1])), ArticleResult())
