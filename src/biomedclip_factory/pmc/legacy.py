"""The legacy OA layout: ``oa_file_list.csv``/``.txt`` plus ``oa_package/xx/yy/PMCnnn.tar.gz`` mirrors.

NCBI retired this FTP layout in August 2026, but institutional mirrors and PMC-15M-era copies
still hold it. Each listed package is fetched, extracted safely and laid out like a Cloud
article version (``PMC<id>.0/PMC<id>.0.xml`` + figures + a metadata JSON carrying the list's
licence), so align and everything after it run unchanged. Version ``0`` marks "legacy package,
version unknown": the file list gives no version number. Rows carry the list's Last Updated as
``last_modified``, so a rerun skips packages that did not change, like the inventory layout.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from ..errors import ArticleError, SourceError
from ..io import write_bytes_atomic
from .bucket import Bucket
from .manifest import FAILED, ManifestRow
from .metadata import ArticleMeta, RemoteFile, SelectionPolicy, file_row
from .package import extract_package

LEGACY_VERSION = 0
KEPT_SUFFIXES = frozenset({".nxml", ".xml", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif"})
_PMCID = re.compile(r"PMC\d+")


@dataclass(frozen=True)
class LegacyEntry:
    """One row of the file list: where the package is and what the list says about it."""

    key: str
    pmcid: str
    pmid: int | None
    license_code: str | None
    last_updated: str | None

    @property
    def prefix(self) -> str:
        return f"{self.pmcid}.{LEGACY_VERSION}"

    @property
    def last_modified(self) -> str | None:
        """The list's Last Updated: a rerun reuses the package while it stays the same (.txt lists have none)."""
        return self.last_updated

    @property
    def date(self) -> str | None:
        """YYYY-MM-DD of the package's Last Updated."""
        return self.last_updated[:10] if self.last_updated else None

    def meta(self) -> ArticleMeta:
        """The entry as Cloud-style metadata, so the one selection policy applies to both layouts."""
        return ArticleMeta(pmcid=self.pmcid, version=LEGACY_VERSION, pmid=self.pmid, doi=None,
                           license_code=self.license_code, is_pmc_openaccess=True, is_historical_ocr=False,
                           is_retracted=False, xml=RemoteFile(self.key, None))


@dataclass(frozen=True)
class BadLine:
    """A file-list line that names no usable package; reported as a failed manifest row."""

    where: str
    problem: str

    @property
    def prefix(self) -> str:
        return self.where


@dataclass(frozen=True)
class LegacySource:
    """Packages listed in ``file_list`` (a key of ``bucket``), fetched from the same mirror."""

    bucket: Bucket
    file_list: str = "oa_file_list.csv"

    def items(self) -> Iterator[LegacyEntry | BadLine]:
        return iter(parse_file_list(self.bucket.read(self.file_list), self.file_list))

    def fetch(self, item: LegacyEntry | BadLine, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
        return scrape_legacy_article(self.bucket, item, out_dir, policy)


def _pmid(value: str) -> int | None:
    digits = value.strip().removeprefix("PMID:")
    return int(digits) if digits.isdigit() else None


def _entry(key: str, pmcid: str, pmid: str, licence: str, updated: str | None, where: str) -> LegacyEntry | BadLine:
    key, pmcid = key.strip(), pmcid.strip()
    if not _PMCID.fullmatch(pmcid):
        return BadLine(where, f"bad accession id {pmcid!r}")
    if not key.endswith(".tar.gz") or PurePosixPath(key).is_absolute() or ".." in PurePosixPath(key).parts:
        return BadLine(where, f"bad package path {key!r}")
    return LegacyEntry(key=key, pmcid=pmcid, pmid=_pmid(pmid), license_code=licence.strip() or None,
                       last_updated=(updated or "").strip() or None)


def parse_file_list(blob: bytes, name: str) -> list[LegacyEntry | BadLine]:
    """Parse ``oa_file_list.csv`` (header row) or ``oa_file_list.txt`` (a date line, then TSV rows)."""
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{name}: not UTF-8 text: {exc}") from exc
    out: list[LegacyEntry | BadLine] = []
    if name.endswith(".csv"):
        rows = csv.reader(io.StringIO(text))
        header = next(rows, None)
        if not header or header[0].strip() != "File":
            raise SourceError(f"{name}: expected the header 'File,Article Citation,Accession ID,…', got {header}")
        for lineno, row in enumerate(rows, start=2):
            where = f"{name}:{lineno}"
            out.append(_entry(row[0], row[2], row[4], row[5], row[3], where) if len(row) >= 6
                       else BadLine(where, f"{len(row)} fields, expected 6"))
        return out
    for lineno, line in enumerate(text.splitlines()[1:], start=2):  # line 1: the list's date
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{name}:{lineno}"
        out.append(_entry(fields[0], fields[2], fields[3], fields[4], None, where) if len(fields) >= 5
                   else BadLine(where, f"{len(fields)} fields, expected 5"))
    return out


def _is_kept(rel: str) -> bool:
    return PurePosixPath(rel).suffix.lower() in KEPT_SUFFIXES


def scrape_legacy_article(bucket: Bucket, entry: LegacyEntry | BadLine, out_dir: Path,
                          policy: SelectionPolicy) -> tuple[ManifestRow, int]:
    """Fetch and lay out one legacy package; always returns its manifest row, never raises for bad input."""
    if isinstance(entry, BadLine):
        return ManifestRow(entry.prefix, FAILED, error=entry.problem), 0
    row = ManifestRow.new(entry.prefix, pmcid=entry.pmcid, version=LEGACY_VERSION, pmid=entry.pmid,
                          license_code=entry.license_code, is_retracted=False, last_modified=entry.last_modified)
    reason = policy.rejection(entry.meta())
    if reason:
        return row.skipped(reason), 0
    fetched = 0
    try:  # an unchanged package is not asked for at all: scrape() reuses its row from the last run
        blob = bucket.read(entry.key)
        fetched = len(blob)
        return row.ok(_lay_out(blob, entry, out_dir / entry.prefix)), fetched
    except (ArticleError, SourceError) as exc:
        return row.failed(str(exc)), fetched


def _lay_out(blob: bytes, entry: LegacyEntry, target: Path) -> list[dict[str, Any]]:
    """Extract the package into ``target`` as a Cloud-style article version (the JSON goes last);
    returns its files."""
    written = extract_package(blob, target, keep=_is_kept, name=entry.key)
    xmls = [w for w in written if PurePosixPath(w).suffix.lower() in (".nxml", ".xml")]
    if len(xmls) != 1:
        raise ArticleError(f"{entry.key}: expected one article XML (.nxml), found {len(xmls)}: {xmls}")
    (target / xmls[0]).rename(target / f"{entry.prefix}.xml")
    names = sorted(f"{entry.prefix}.xml" if w == xmls[0] else w for w in written)
    files = [file_row(n, (target / n).read_bytes()) for n in names]
    meta = {"pmcid": entry.pmcid, "version": LEGACY_VERSION, "pmid": entry.pmid, "license_code": entry.license_code,
            "is_pmc_openaccess": True, "is_retracted": False, "is_historical_ocr": False,
            "legacy_package": entry.key, "legacy_last_updated": entry.last_updated, "files": files}
    write_bytes_atomic(target / f"{entry.prefix}.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return files
