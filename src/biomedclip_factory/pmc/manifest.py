"""A scraped article version's record: one line of ``data/raw/manifest.jsonl``.

DESIGN's manifest contract as code. Every source (the Cloud bucket, the inventory, the legacy packages,
a local pairs file) makes these, scrape writes them, and align reads which versions are there and keys
its reuse on each line's digest. What a source knows about a version (pmcid, version, licence, dates)
varies by source and stays as the source gave it, so a line read back is the line written.
(Not in ``corpus/records.py``: that module is part of the align journal's code hash, and a scrape-side
edit must not re-align the whole corpus.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import DataError
from ..io import iter_jsonl

MANIFEST = "manifest.jsonl"  # in the raw folder

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
_OWN = ("prefix", "files", "status", "error")


@dataclass(frozen=True)
class ManifestRow:
    prefix: str  # the version folder, PMC<id>.<version> (a local pairs file: its group)
    status: str  # ok | failed | skipped:<reason>
    files: list[dict[str, Any]] = field(default_factory=list)  # name, md5, bytes (``metadata.file_row``)
    meta: dict[str, Any] = field(default_factory=dict)  # what the source said: pmcid, version, licence, dates, …
    error: str | None = None  # why it failed

    @classmethod
    def new(cls, prefix: str, **meta: Any) -> ManifestRow:
        """A version being fetched (its status is set when the fetch ends)."""
        return cls(prefix, "", meta={"pmcid": prefix.split(".")[0], **meta})

    def ok(self, files: list[dict[str, Any]]) -> ManifestRow:
        return replace(self, status=OK, files=files)

    def failed(self, error: str, files: list[dict[str, Any]] | None = None) -> ManifestRow:
        return replace(self, status=FAILED, error=error, files=self.files if files is None else files)

    def skipped(self, reason: str) -> ManifestRow:
        return replace(self, status=f"{SKIPPED}:{reason}")

    def with_meta(self, **meta: Any) -> ManifestRow:
        return replace(self, meta={**self.meta, **meta})

    @property
    def kept(self) -> bool:
        """Its folder stays in ``data/raw``: fetched, or failed and kept for the next run's retry."""
        return self.status in (OK, FAILED)

    def row(self) -> dict[str, Any]:
        """The manifest line (the journal digests it: every key and value counts, not their order)."""
        line = {"prefix": self.prefix, **self.meta, "files": self.files, "status": self.status}
        return line if self.error is None else {**line, "error": self.error}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ManifestRow:
        if "prefix" not in row or "status" not in row:
            raise DataError(f"manifest line {dict(row)!r:.120}: no prefix or status (written by another tool?)")
        return cls(row["prefix"], row["status"], row.get("files", []),
                   {k: v for k, v in row.items() if k not in _OWN}, row.get("error"))


def iter_manifest(raw_dir: Path) -> Iterator[ManifestRow]:
    """The rows of ``raw_dir``'s manifest, streamed (millions of versions need not fit in memory);
    a bad row is a DataError naming the manifest."""
    path = raw_dir / MANIFEST
    for row in iter_jsonl(path):
        try:
            yield ManifestRow.from_row(row)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
