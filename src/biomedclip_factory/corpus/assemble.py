"""The whole corpus from its articles: align what the journal lacks, dedup, stream the result.

At PMC scale (15 M pairs, ~4 KB each as Python dicts on the sample) the corpus does not fit in
memory whole. Results therefore stay in the align journal on disk: dedup uses only each pair's
id and hashes, held in the journal's index, and pairs and rejects are streamed back from the
journal in a fixed order (pair id), so a resumed, incremental or cold run writes the same table.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from ..parallel import Mapper, progress_map, thread_map
from .align import AlignConfig, ArticleResult, align_article
from .dedup import deduplicate
from .journal import AlignJournal


@dataclass
class AlignedCorpus:
    """Every article aligned into ``journal``; duplicates found, nothing else held in memory."""
    journal: AlignJournal
    prefixes: list[str]
    duplicates: dict[str, dict[str, Any]]  # pair_id -> its duplicate reject
    figures: int
    reject_reasons: Counter[str]
    reused: int  # articles taken from the journal, not aligned in this run

    def pairs(self) -> Iterator[dict[str, Any]]:
        """The kept pairs in pair-id order (articles by ``prefix + "_"``, the pair ids' own prefix)."""
        for prefix in sorted(self.prefixes, key=lambda p: f"{p}_"):
            for pair in sorted(self.journal.result(prefix).pairs, key=lambda p: p["pair_id"]):
                if pair["pair_id"] not in self.duplicates:
                    yield pair

    def rejects(self) -> Iterator[dict[str, Any]]:
        """Each article's rejects in article order, then the duplicates in pair-id order."""
        for prefix in self.prefixes:
            yield from self.journal.result(prefix).rejects
        yield from self.duplicates.values()


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
        keys += [key._asdict() for key in pair_keys]
    _, duplicate_rejects = deduplicate(keys, cfg.near_duplicate_max_distance)
    reasons.update(r["reason"] for r in duplicate_rejects)
    duplicates = {f"{r['article']}_{r['fig_id']}": r for r in duplicate_rejects}  # the pair id's own form
    return AlignedCorpus(journal, list(prefixes), duplicates, figures, reasons, len(prefixes) - len(todo))


def align_corpus(raw_dir: Path, prefixes: list[str], out_dir: Path, cfg: AlignConfig, workers: int = 2,
                 progress: bool = True, mapper: Mapper | None = None,
                 journal: AlignJournal | None = None) -> tuple[list[dict], list[dict], int]:
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
