"""Listing the PMC Cloud bucket at scale from its daily S3 inventory, and what changed since last time.

Listing 7 M+ article versions through ListObjectsV2 takes thousands of paged requests; the bucket's
daily inventory (``inventory-reports/pmc-oa-opendata/metadata/<date>/manifest.json`` → gzip CSV
parts, no header: ``Bucket, Key, LastModifiedDate, ETag``) has every ``metadata/PMC<id>.<ver>.json``
with its modification time in a few files (PMC_FORMATS.md section 1). A version whose metadata
changed (new licence, retraction, corrected files) gets a new LastModified, so a rerun compares
each version's LastModified with what the previous run recorded and fetches only the newer ones.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import SourceError
from .bucket import Bucket
from .manifest import ManifestRow
from .metadata import SelectionPolicy
from .scrape import scrape_article

INVENTORY_PREFIX = "inventory-reports/pmc-oa-opendata/metadata/"
_METADATA_KEY = re.compile(r"^metadata/(PMC\d+\.\d+)\.json$")


@dataclass(frozen=True)
class InventoryItem:
    prefix: str  # PMC<id>.<ver>
    last_modified: str  # ISO 8601 from the inventory; sorts as time

    @property
    def date(self) -> str:
        """YYYY-MM-DD of the version's last change (what a date window selects on)."""
        return self.last_modified[:10]


def latest_inventory(bucket: Bucket, root: str = INVENTORY_PREFIX) -> str:
    """The newest dated inventory folder that has a manifest."""
    dates = sorted(bucket.list_prefixes(root), reverse=True)
    if not dates:
        raise SourceError(f"{bucket.base}: no inventory under {root}")
    return dates[0]


def read_inventory(bucket: Bucket, folder: str) -> list[InventoryItem]:
    """Every article version in the inventory at ``folder``, sorted by prefix."""
    manifest_key = f"{folder.rstrip('/')}/manifest.json"
    try:
        manifest = json.loads(bucket.read(manifest_key))
        parts = [f["key"] for f in manifest["files"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SourceError(f"{manifest_key}: not an S3 inventory manifest: {exc}") from exc
    items: dict[str, InventoryItem] = {}
    for part in parts:
        try:
            text = gzip.decompress(bucket.read(part)).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SourceError(f"{part}: unreadable inventory part: {exc}") from exc
        for row in csv.reader(io.StringIO(text)):
            match = _METADATA_KEY.match(row[1]) if len(row) >= 3 else None
            if match:
                items[match[1]] = InventoryItem(match[1], row[2])
    return [items[k] for k in sorted(items)]


@dataclass(frozen=True)
class InventorySource:
    """Article versions listed by the bucket's newest (or a given) daily inventory."""

    bucket: Bucket
    folder: str | None = None  # a dated inventory folder; None = the newest

    def items(self) -> Iterator[InventoryItem]:
        return iter(read_inventory(self.bucket, self.folder or latest_inventory(self.bucket)))

    def fetch(self, item: InventoryItem, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
        row, fetched = scrape_article(self.bucket, item.prefix, out_dir, policy)
        return row.with_meta(last_modified=item.last_modified), fetched
