"""Fetch selected article versions from a bucket into ``data/raw``, verified and resumable.

Per article version: metadata JSON → selection policy → XML and figure media, each checked against
the md5 in its ``?md5=`` URL and written atomically. A file already on disk with the right md5 is
not fetched again, so an interrupted or repeated run only does what is missing or changed. One
broken article becomes a manifest row with its reason; it never stops the run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..errors import ArticleError, DataError, SourceError
from ..io import sweep_partial_writes, write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from ..parallel import Mapper, progress_map, thread_map
from .bucket import Bucket
from .manifest import FAILED, MANIFEST, OK, ManifestRow, iter_manifest
from .metadata import ArticleMeta, RemoteFile, SelectionPolicy, file_row, parse_metadata
from .versions import item_prefix, newest_versions, prune


@dataclass
class ScrapeResult:
    rows: list[ManifestRow]
    fetched_bytes: int
    fetched_articles: int = 0  # looked at this run (the rest reused from the previous manifest)
    removed: list[str] = field(default_factory=list)  # version folders deleted (superseded, retracted, dropped)
    kept_after_failure: dict[str, str] = field(default_factory=dict)  # prefix → why it could not be fetched again

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def lines(self) -> Iterator[dict[str, Any]]:
        """The manifest's lines, as written (one at a time: millions of versions)."""
        return (r.row() for r in self.rows)


def _md5_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_file(bucket: Bucket, remote: RemoteFile, dest: Path) -> tuple[dict[str, Any], int]:
    """Fetch one file unless an identical copy is already there; return its row and bytes fetched."""
    if remote.md5 and _md5_of(dest) == remote.md5:
        return {"name": remote.name, "md5": remote.md5, "bytes": dest.stat().st_size}, 0
    data = bucket.read(remote.key)
    row = file_row(remote.name, data)
    if remote.md5 and row["md5"] != remote.md5:
        raise ArticleError(f"{remote.key}: md5 mismatch (expected {remote.md5}, got {row['md5']})")
    write_bytes_atomic(dest, data)
    return row, len(data)


def scrape_article(bucket: Bucket, prefix: str, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
    """Scrape one article version; always returns its manifest row, never raises for bad input."""
    row, files = ManifestRow.new(prefix), []
    meta_key = f"{prefix}/{prefix}.json"
    fetched = 0
    try:
        meta_blob = bucket.read(meta_key)
        meta = parse_metadata(meta_blob, meta_key)
        row = row.with_meta(**_meta_fields(meta))
        reason = policy.rejection(meta)
        if reason:
            return row.skipped(reason), 0
        target = out_dir / meta.prefix
        write_bytes_atomic(target / f"{meta.prefix}.json", meta_blob)
        for remote in (meta.xml, *meta.media):
            file_row, n = _fetch_file(bucket, remote, target / remote.name)
            files.append(file_row)
            fetched += n
        return row.ok(files), fetched
    except (ArticleError, SourceError) as exc:
        return row.failed(str(exc), files), fetched


def _meta_fields(meta: ArticleMeta) -> dict[str, Any]:
    return {"pmcid": meta.pmcid, "version": meta.version, "pmid": meta.pmid,
            "license_code": meta.license_code, "is_retracted": meta.is_retracted}


class ArticleSource(Protocol):
    """Where article versions come from: what there is to fetch, and how to fetch one of them."""

    def items(self) -> Iterator[Any]:
        """The article versions on offer, in a stable order."""

    def fetch(self, item: Any, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
        """Fetch one into ``out_dir``; its manifest row and the bytes fetched. Never raises for bad input."""


@dataclass(frozen=True)
class CloudSource:
    """A bucket in the PMC Cloud layout (live, mirrored over HTTP, or a folder)."""

    bucket: Bucket

    def items(self) -> Iterator[str]:
        return self.bucket.list_prefixes()

    def fetch(self, item: str, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
        return scrape_article(self.bucket, item, out_dir, policy)


def _fetch_one(source: ArticleSource, out_dir: Path, policy: SelectionPolicy, item: Any) -> tuple[ManifestRow, int]:
    # What a killed run left half-written for this article: temp files in its folder, staging dirs beside it.
    prefix = item_prefix(item)
    sweep_partial_writes(out_dir / prefix)
    sweep_partial_writes(out_dir, f"{prefix}.")
    return source.fetch(item, out_dir, policy)


DateWindow = tuple[str | None, str | None]


def in_window(date: str | None, window: DateWindow) -> bool:
    """Whether a YYYY-MM-DD ``date`` lies in ``window``; everything does when the window is open."""
    since, until = window
    if since is None and until is None:
        return True
    return date is not None and (since is None or date >= since) and (until is None or date <= until)


def _reusable(previous: dict[str, ManifestRow], item: Any, out_dir: Path) -> ManifestRow | None:
    """The previous run's row for ``item`` if the source says it has not changed since (sources that
    date their items, like the inventory) and its files are still there; else None: fetch it."""
    stamp = getattr(item, "last_modified", None)
    row = previous.get(item_prefix(item))
    if stamp is None or row is None or row.meta.get("last_modified") != stamp or row.status == FAILED:
        return None
    return row if row.status != OK or (out_dir / row.prefix).is_dir() else None


def _last_good_fetch(previous: dict[str, ManifestRow], failed: ManifestRow, out_dir: Path) -> ManifestRow | None:
    """The last run's row of a version this run could not fetch again (a timeout, a server's bad night), if
    its files are all still there. A PMC version never changes (a correction is a new version), so they are
    still that version: dropping it would shrink the corpus, and retrain on less, for a network error.
    The row is kept as it was, so align reuses its work on it."""
    row = previous.get(failed.prefix)
    if row is None or row.status != OK:
        return None
    folder = out_dir / row.prefix
    intact = all((folder / f["name"]).is_file() and (folder / f["name"]).stat().st_size == f["bytes"] for f in row.files)
    return row if intact else None


def scrape(source: ArticleSource, out_dir: Path, policy: SelectionPolicy, max_articles: int | None = None,
           workers: int = 8, progress: bool = True, mapper: Mapper | None = None,
           previous: list[ManifestRow] | None = None, window: DateWindow = (None, None)) -> ScrapeResult:
    """Scrape the newest version of up to ``max_articles`` articles from ``source`` into ``out_dir``.

    ``previous`` (the last run's manifest, same policy) lets dated sources skip unchanged versions;
    ``window`` (first day, last day; None = open) keeps only dated items inside it.
    Superseded versions become ``skipped:superseded`` rows; afterwards ``out_dir`` holds only the
    versions whose row is ``ok`` (or ``failed``, kept for the retry). Per-article work runs through ``mapper`` (default: threads here).
    """
    items, superseded = newest_versions(islice(source.items(), max_articles))
    before = {r.prefix: r for r in previous or ()}
    rows = [ManifestRow.new(old, superseded_by=new).skipped("superseded") for old, new in superseded.items()]
    todo = []
    for item in items:
        if hasattr(item, "date") and not in_window(item.date, window):  # undated items (bad lines) pass on
            rows.append(ManifestRow.new(item_prefix(item), date=item.date).skipped("outside_date_window"))
            continue
        reused = _reusable(before, item, out_dir)
        if reused is not None:
            rows.append(reused)
        else:
            todo.append(item)
    total, kept_after_failure = 0, {}
    for row, fetched in progress_map(mapper or thread_map(workers), partial(_fetch_one, source, out_dir, policy),
                                     todo, "scrape", "article", progress):
        last_good = _last_good_fetch(before, row, out_dir) if row.status == FAILED else None
        if last_good is not None:
            kept_after_failure[row.prefix] = row.error or ""
        rows.append(last_good or row)
        total += fetched
    rows.sort(key=lambda r: r.prefix)
    # A failed version keeps what it had (the next run retries it); skipped and superseded ones go.
    removed = prune(out_dir, {r.prefix for r in rows if r.kept})
    return ScrapeResult(rows=rows, fetched_bytes=total, fetched_articles=len(todo), removed=removed,
                        kept_after_failure=kept_after_failure)


STATE = "state.json"


def previous_manifest(raw_dir: Path, selection: dict[str, Any]) -> list[ManifestRow] | None:
    """The last run's rows, if it made the same selection from the same source."""
    try:
        state = json.loads((raw_dir / STATE).read_text())
        return list(iter_manifest(raw_dir)) if state.get("selection") == selection else None
    except (OSError, json.JSONDecodeError):
        return None
    except DataError as exc:  # damaged: list the source again (files already here with their md5 are kept)
        print(f"scrape: {exc}; listing the source again", flush=True)
        return None


def write_manifest(raw_dir: Path, result: ScrapeResult, selection: dict[str, Any]) -> str | None:
    """The manifest and the state the next run starts from; returns the watermark (newest LastModified seen)."""
    for name in (MANIFEST, STATE):  # a write a killed run left half done
        sweep_partial_writes(raw_dir, f"{name}.")
    write_jsonl_atomic(raw_dir / MANIFEST, result.lines())
    watermark = max((r.meta["last_modified"] for r in result.rows if r.meta.get("last_modified")), default=None)
    write_json_atomic(raw_dir / STATE, {"selection": selection, "watermark": watermark})
    return watermark
