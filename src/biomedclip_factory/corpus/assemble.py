"""The whole corpus from its articles: align what the journal lacks, dedup, stream the result.

At PMC scale (15 M pairs, ~4 KB each as Python dicts on the sample) the corpus does not fit in
memory whole. Results therefore stay in the align journal on disk: dedup uses only each pair's
id and hashes, held in the journal's index, and pairs and rejects are streamed back from the
journal in a fixed order (pair id), so a resumed, incremental or cold run writes the same table.
"""
from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_writer, write_jsonl_atomic
from ..parallel import Mapper, progress_map, thread_map
from .align import ArticleResult, align_article
from .align_config import AlignConfig
from .dedup import deduplicate
from .journal import AlignJournal
from .records import PAIR_SCHEMA, Pair, Reject, make_pair_id
from .stats import caption_tokens
from .table import ROW_GROUP, TABLE_NAME


@dataclass
class PairStats:
    """What the metrics and plots need, counted while the pairs stream past."""
    pairs: int = 0
    by_split: Counter[str] = field(default_factory=Counter)
    caption_tokens: Counter[int] = field(default_factory=Counter)
    per_article: Counter[str] = field(default_factory=Counter)


def write_pairs(pairs: Iterable[Pair], out_dir: Path, on_batch: Callable[[list[Pair]], None] | None = None,
                row_group: int = ROW_GROUP) -> PairStats:
    """Write ``out_dir``'s pairs table a row group at a time, handing each group to ``on_batch`` once
    written (align puts the group's images beside the table there)."""
    stats = PairStats()
    with atomic_writer(out_dir / TABLE_NAME) as fh, pq.ParquetWriter(fh, PAIR_SCHEMA) as writer:
        stream = iter(pairs)
        while batch := list(itertools.islice(stream, row_group)):
            writer.write_table(pa.Table.from_pylist([pair.row() for pair in batch], schema=PAIR_SCHEMA))
            if on_batch is not None:
                on_batch(batch)
            for pair in batch:
                stats.pairs += 1
                stats.by_split[pair.split] += 1
                stats.caption_tokens[caption_tokens(pair.caption)] += 1
                stats.per_article[pair.article] += 1
    return stats


@dataclass
class AlignedCorpus:
    """Every article aligned into ``journal``; duplicates found, nothing else held in memory."""
    journal: AlignJournal
    prefixes: list[str]
    duplicates: dict[str, Reject]  # pair_id -> its duplicate reject
    figures: int
    reject_reasons: Counter[str]
    reused: int  # articles taken from the journal, not aligned in this run

    def pairs(self) -> Iterator[Pair]:
        """The kept pairs in pair-id order (articles by ``prefix + "_"``, the pair ids' own prefix)."""
        for prefix in sorted(self.prefixes, key=lambda p: make_pair_id(p, "")):
            for pair in sorted(self.journal.result(prefix).pairs, key=lambda p: p.pair_id):
                if pair.pair_id not in self.duplicates:
                    yield pair

    def rejects(self) -> Iterator[Reject]:
        """Each article's rejects in article order, then the duplicates in pair-id order."""
        for prefix in self.prefixes:
            yield from self.journal.result(prefix).rejects
        yield from self.duplicates.values()

    def export(self, out_dir: Path, row_group: int = ROW_GROUP) -> PairStats:
        """The pairs folder: the table, the kept pairs' images (linked from the journal), the rejects."""
        out_dir.mkdir(parents=True, exist_ok=True)  # also when no figure survives: an empty table is a table
        stats = write_pairs(self.pairs(), out_dir, partial(self.journal.export_images, out_dir=out_dir), row_group)
        write_jsonl_atomic(out_dir / "rejects.jsonl", (reject.row() for reject in self.rejects()))
        return stats


def _align_one(raw_dir: Path, images_out: Path, cfg: AlignConfig, prefix: str) -> ArticleResult:
    return align_article(raw_dir / prefix, images_out, cfg)


def align_articles(raw_dir: Path, prefixes: list[str], cfg: AlignConfig, journal: AlignJournal,
                   mapper: Mapper | None = None, progress: bool = True) -> AlignedCorpus:
    """Align the articles ``journal`` does not hold unchanged, recording each as it arrives (a
    killed run resumes from there), then find duplicates across the whole corpus.

    Per-article work runs through ``mapper`` (default: 2 threads here); images are made in the
    journal's folder.
    """
    todo = [p for p in prefixes if not journal.holds(p)]
    if len(todo) < len(prefixes):
        print(f"align: {len(prefixes) - len(todo):,} of {len(prefixes):,} article versions reused from "
              f"{journal.dir}", flush=True)
    with journal:
        work = partial(_align_one, raw_dir, journal.dir, cfg)
        for prefix, result in zip(todo, progress_map(mapper or thread_map(2), work, todo, "align", "article",
                                                     progress)):
            journal.record(prefix, result)
    journal.compact()
    keys, figures, reasons = [], 0, Counter[str]()
    for prefix in prefixes:  # from the journal's index: no entry is read back for this
        article_figures, pair_keys, reject_reasons = journal.summary(prefix)
        figures += article_figures
        reasons.update(reject_reasons)
        keys += pair_keys
    _, duplicate_rejects = deduplicate(keys, cfg.near_duplicate_max_distance)
    reasons.update(r.reason for r in duplicate_rejects)
    duplicates = {r.pair_id: r for r in duplicate_rejects}
    return AlignedCorpus(journal, list(prefixes), duplicates, figures, reasons, len(prefixes) - len(todo))


def align_corpus(raw_dir: Path, prefixes: list[str], out_dir: Path, cfg: AlignConfig, workers: int = 2,
                 progress: bool = True, mapper: Mapper | None = None,
                 journal: AlignJournal | None = None) -> tuple[list[Pair], list[Reject], int]:
    """Align every article in ``prefixes`` into lists (pairs, rejects, figures seen), the kept
    pairs' images under ``out_dir`` — for corpora that fit in memory; the align stage streams
    ``align_articles`` instead. Without a ``journal`` a throw-away one is used."""
    parent = out_dir.parent if out_dir.parent.is_dir() else None  # same filesystem: images hard-link
    with tempfile.TemporaryDirectory(dir=parent) if journal is None else nullcontext() as tmp:
        journal = journal or AlignJournal(Path(tmp), cfg, {p: "" for p in prefixes})
        corpus = align_articles(raw_dir, prefixes, cfg, journal, mapper or thread_map(workers), progress)
        pairs = list(corpus.pairs())
        journal.export_images(pairs, out_dir)
        rejects = list(corpus.rejects())
        journal.close()
    return pairs, rejects, corpus.figures
