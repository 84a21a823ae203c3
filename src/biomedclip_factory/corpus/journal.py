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
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Iterable, Iterator, Mapping, NamedTuple

from ..io import append_log_row, cut_partial_last_line, sweep_partial_writes
from ..library_versions import DECODERS, release
from .. import rgb
from ..pmc import jats
from . import align, images, records, split
from .align import ArticleResult
from .align_config import AlignConfig
from .records import DedupKey, Pair, Reject

JOURNAL = "journal.jsonl"
# Rewrite the journal without stale entries once they make up this share of its lines.
COMPACT_AT = 0.1


def settings_key(cfg: AlignConfig) -> str:
    """A digest of what per-article results depend on besides the article itself (this module's
    own code too: it reads the entries back).

    Corpus-wide dedup runs after the journal, so its distance is left out: changing it reuses
    every article.
    """
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "near_duplicate_max_distance"}
    digest = hashlib.sha256(json.dumps([settings, [release(d) for d in DECODERS]],
                                       sort_keys=True).encode())
    for source in (align.__file__, images.__file__, rgb.__file__, records.__file__, split.__file__, jats.__file__,
                   __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def article_digest(manifest_row: Mapping[str, Any]) -> str:
    """A digest of one scraped article version: its files (name, size, md5) and metadata."""
    return hashlib.sha256(json.dumps(manifest_row, sort_keys=True).encode()).hexdigest()


class _Entry(NamedTuple):
    digest: str
    offset: int  # of its line in the journal file
    figures: int
    pairs: tuple[DedupKey, ...]
    reject_reasons: tuple[str, ...]


class AlignJournal:
    """The journal of ``cfg``'s settings under ``root``, for the article versions in ``digests``.

    Only an index stays in memory — per article its digest, line offset, figure count, reject
    reasons and each pair's ``DedupKey`` (what dedup needs, parsed once while the journal is read
    or written) — and a whole entry is read back from disk when asked for, so a corpus of
    millions of articles is never held whole. Use it as a context manager: entries are appended
    while it is open.
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
        self._index: dict[str, _Entry] = {}  # a re-aligned article: its last line wins
        self._lines = 0
        try:
            cut_partial_last_line(self._path)
            with self._path.open("ab+") as fh:
                fh.seek(0)
                for offset, row in _rows_with_offsets(fh):
                    self._index[row["prefix"]] = _entry(row, offset)
                    self._lines += 1
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:  # damaged: only costs time
            print(f"align: {self._path} is damaged ({exc}); aligning every article again", flush=True)
            self._path.unlink()
            self._index, self._lines = {}, 0
        self._writer: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None

    def __enter__(self) -> AlignJournal:
        self._writer = self._path.open("ab")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for fh in (self._writer, self._reader):
            if fh is not None:
                fh.close()
        self._writer = self._reader = None

    def holds(self, prefix: str) -> bool:
        """Whether ``prefix`` was aligned from the same files it has now, and its images are still there."""
        entry = self._index.get(prefix)
        return (entry is not None and entry.digest == self._digests[prefix]
                and all((self.dir / pair.image).is_file() for pair in entry.pairs))

    def summary(self, prefix: str) -> tuple[int, tuple[DedupKey, ...], tuple[str, ...]]:
        """(figures, pair keys, reject reasons) of ``prefix``'s entry, from memory."""
        entry = self._index[prefix]
        return entry.figures, entry.pairs, entry.reject_reasons

    def result(self, prefix: str) -> ArticleResult:
        if self._reader is None:
            self._reader = self._path.open("rb")
        self._reader.seek(self._index[prefix].offset)
        row = json.loads(self._reader.readline())
        return ArticleResult(pairs=[Pair.from_row(p) for p in row["pairs"]],
                             rejects=[Reject.from_row(r) for r in row["rejects"]], figures=row["figures"])

    def record(self, prefix: str, result: ArticleResult) -> None:
        if self._writer is None:
            raise RuntimeError("AlignJournal.record outside its `with` block")
        row = {"prefix": prefix, "digest": self._digests[prefix], "figures": result.figures,
               "pairs": [p.row() for p in result.pairs], "rejects": [r.row() for r in result.rejects]}
        offset = self._writer.tell()
        append_log_row(self._writer, row)
        self._index[prefix] = _entry(row, offset)
        self._lines += 1

    def compact(self) -> int:
        """Drop entries of article versions no longer scraped (and their images) once they make up
        ``COMPACT_AT`` of the journal; returns how many lines went. Call it once the journal is closed."""
        if self._writer is not None:
            raise RuntimeError("AlignJournal.compact inside its `with` block")
        stale = [p for p in self._index if p not in self._digests]
        dropped = self._lines - len(self._index) + len(stale)
        if dropped <= COMPACT_AT * self._lines:
            return 0
        for prefix in stale:
            for pair in self._index.pop(prefix).pairs:
                (self.dir / pair.image).unlink(missing_ok=True)
        compacted = self._path.with_name(f".{JOURNAL}.tmp")
        with self._path.open("rb") as old, compacted.open("wb") as new:
            for prefix, entry in self._index.items():
                old.seek(entry.offset)
                self._index[prefix] = entry._replace(offset=new.tell())
                new.write(old.readline())
        os.replace(compacted, self._path)
        self._lines = len(self._index)
        self.close()  # a reader of the old file would read the wrong lines
        return dropped

    def export_images(self, pairs: Iterable[Pair], out_dir: Path) -> None:
        """Put the kept pairs' images under ``out_dir``: hard links, a copy where links cannot go."""
        for pair in pairs:
            target = out_dir / pair.image
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.dir / pair.image, target)
            except OSError:
                shutil.copyfile(self.dir / pair.image, target)


def _entry(row: Mapping[str, Any], offset: int) -> _Entry:
    return _Entry(row["digest"], offset, row["figures"], tuple(DedupKey(*(p[k] for k in DedupKey._fields)) for p in row["pairs"]),
                  tuple(r["reason"] for r in row["rejects"]))


def _rows_with_offsets(fh: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = fh.tell()
    for line in fh:
        yield offset, json.loads(line)
        offset += len(line)
