"""Align results kept per article version across runs: align resumes, and grows with PMC.

At PMC scale align is hours of image decoding. A run killed at article 3,000,000 must not start
over, and a retrain that scraped 20,000 new article versions must not decode the other 4.4 M
again. Each aligned article's pairs and rejects are appended to a journal as they arrive (its
images are already written beside it); a rerun reuses every entry whose article files are
unchanged (the scrape manifest's names, sizes and md5s) and aligns the rest. The journal lives
under a key of everything else a per-article result depends on — the settings, the aligning
code and the decoders' versions — so changing any of them starts a fresh one instead of
mixing results: a resumed or incremental run gives what a cold run gives.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Mapping

from ..io import append_log_row, read_append_log, sweep_partial_writes, write_jsonl_atomic
from ..pmc import jats
from . import align, images, split
from .align import AlignConfig, ArticleResult

JOURNAL = "journal.jsonl"
# Libraries whose output bytes (JPEG encoding, resize, pHash, parsing) a per-article result holds.
DECODERS = ("pillow", "torch", "imagehash", "numpy", "lxml")
# Rewrite the journal without stale entries once they make up this share of its lines.
COMPACT_AT = 0.1


def settings_key(cfg: AlignConfig) -> str:
    """A digest of what per-article results depend on besides the article itself (this module's
    own code too: it reads the entries back).

    Corpus-wide dedup runs after the journal, so its distance is left out: changing it reuses
    every article.
    """
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "near_duplicate_max_distance"}
    digest = hashlib.sha256(json.dumps([settings, [importlib.metadata.version(d) for d in DECODERS]],
                                       sort_keys=True).encode())
    for source in (align.__file__, images.__file__, split.__file__, jats.__file__, __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def article_digest(manifest_row: Mapping[str, Any]) -> str:
    """A digest of one scraped article version: its files (name, size, md5) and metadata."""
    return hashlib.sha256(json.dumps(manifest_row, sort_keys=True).encode()).hexdigest()


class AlignJournal:
    """The journal of ``cfg``'s settings under ``root``, for the article versions in ``digests``.

    Use it as a context manager: entries are appended while it is open.
    """

    def __init__(self, root: Path, cfg: AlignConfig, digests: Mapping[str, str]):
        self.dir = root / settings_key(cfg)
        if root.is_dir():
            for other in root.iterdir():  # other settings or code: nothing there can be reused
                if other != self.dir:
                    shutil.rmtree(other) if other.is_dir() else other.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        sweep_partial_writes(self.dir / "images")  # an image a killed run was writing
        self._path = self.dir / JOURNAL
        self._digests = digests
        try:
            rows = read_append_log(self._path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # damaged mid-file: only costs time
            print(f"align: {self._path} is damaged ({exc}); aligning every article again", flush=True)
            self._path.unlink()
            rows = []
        self._lines = len(rows)
        self._entries = {row["prefix"]: row for row in rows}  # a re-aligned article: its last line wins
        self._fh: IO[str] | None = None

    def __enter__(self) -> AlignJournal:
        self._fh = self._path.open("a")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None

    def holds(self, prefix: str) -> bool:
        """Whether ``prefix`` was aligned from the same files it has now, and its images are still there."""
        entry = self._entries.get(prefix)
        return (entry is not None and entry["digest"] == self._digests[prefix]
                and all((self.dir / pair["image"]).is_file() for pair in entry["pairs"]))

    def result(self, prefix: str) -> ArticleResult:
        entry = self._entries[prefix]
        return ArticleResult(pairs=entry["pairs"], rejects=entry["rejects"], figures=entry["figures"])

    def record(self, prefix: str, result: ArticleResult) -> None:
        if self._fh is None:
            raise RuntimeError("AlignJournal.record outside its `with` block")
        row = {"prefix": prefix, "digest": self._digests[prefix], "figures": result.figures,
               "pairs": result.pairs, "rejects": result.rejects}
        append_log_row(self._fh, row)
        self._entries[prefix] = row
        self._lines += 1

    def compact(self) -> int:
        """Drop entries of article versions no longer scraped (and their images) once they make up
        ``COMPACT_AT`` of the journal; returns how many lines went. Call it once the journal is closed."""
        if self._fh is not None:
            raise RuntimeError("AlignJournal.compact inside its `with` block")
        stale = [p for p in self._entries if p not in self._digests]
        dropped = self._lines - len(self._entries) + len(stale)
        if dropped <= COMPACT_AT * self._lines:
            return 0
        for prefix in stale:
            for pair in self._entries.pop(prefix)["pairs"]:
                (self.dir / pair["image"]).unlink(missing_ok=True)
        write_jsonl_atomic(self._path, self._entries.values())
        self._lines = len(self._entries)
        return dropped

    def export_images(self, pairs: list[dict[str, Any]], out_dir: Path) -> None:
        """Put the kept pairs' images under ``out_dir``: hard links, a copy where links cannot go."""
        for pair in pairs:
            target = out_dir / pair["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.dir / pair["image"], target)
            except OSError:
                shutil.copyfile(self.dir / pair["image"], target)
