"""A user's own image–text pairs (a JSONL of image path + caption) as a scrape source.

Each group of pairs (``group_by`` field, e.g. a MedPix case; else one group per line) is laid out
like a Cloud article version — a minimal JATS XML with one ``<fig>`` per pair, the images beside
it, a metadata JSON with the licence — so align, its filters, dedup and split, and everything
after run unchanged on it. Version folders are named ``LOCAL<n>.1``; the split hashes the group.
"""
from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from xml.sax.saxutils import escape, quoteattr

from ..errors import ArticleError, SourceError
from ..io import write_bytes_atomic
from .manifest import ManifestRow
from .metadata import ArticleMeta, RemoteFile, SelectionPolicy, file_row

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_IMAGE_BYTES = 256 * 2**20  # far above any real figure or scan; a bound on what one pair may copy


@dataclass(frozen=True)
class PairGroup:
    prefix: str  # LOCAL<n>.1, stable for the group's key
    key: str  # the group's value (or the line number)
    rows: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def read_pairs(path: Path, group_by: str | None) -> list[PairGroup]:
    """Group the JSONL's rows; a line that is not a JSON object with image and caption is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read the pairs file: {exc}") from exc
    groups: dict[str, list[dict[str, Any]]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{lineno}: not JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str):
            raise SourceError(f"{path}:{lineno}: each line needs string 'image' and 'caption' fields")
        key = str(row.get(group_by, lineno)) if group_by else str(lineno)
        groups.setdefault(key, []).append({**row, "_line": lineno})
    return [PairGroup(f"LOCAL{int(hashlib.sha256(k.encode()).hexdigest()[:12], 16)}.1", k, tuple(rows))
            for k, rows in sorted(groups.items())]


def _jats(group: PairGroup, names: list[str]) -> bytes:
    figs = "".join(
        f'<fig id="p{row["_line"]}"><caption><p>{escape(row["caption"])}</p></caption>'
        f'<graphic xlink:href={quoteattr(name)}/></fig>' for row, name in zip(group.rows, names))
    return ('<?xml version="1.0" encoding="UTF-8"?><article xmlns:xlink="http://www.w3.org/1999/xlink">'
            f'<front><article-meta><article-id pub-id-type="other">{escape(group.key)}</article-id>'
            f"</article-meta></front><body>{figs}</body></article>").encode()


@dataclass(frozen=True)
class LocalPairsSource:
    """Pairs listed in ``path``; image paths are relative to its folder; every pair under ``licence``."""

    path: Path
    licence: str
    group_by: str | None = None

    def items(self) -> Iterator[PairGroup]:
        return iter(read_pairs(self.path, self.group_by))

    def _image(self, pair: dict[str, Any]) -> Path:
        """The pair's image file: inside the JSONL's folder (links resolved), a regular file, at most
        ``MAX_IMAGE_BYTES``. Anything else would copy server files into ``data/raw`` (a DVC output that
        ``dvc push`` uploads) or read ``/dev/zero`` until memory runs out."""
        # named by the JSONL's name, not its path: a failed row is kept in data/raw, alike in every checkout
        where = f"{self.path.name}:{pair['_line']}: image {pair['image']!r}"
        root = self.path.parent.resolve()
        source = (root / pair["image"]).resolve()
        if root not in source.parents:
            raise ArticleError(f"{where}: outside the folder of {self.path.name} (pairs may only name images under it)")
        try:
            info = source.stat()
        except OSError as exc:
            raise ArticleError(f"{where}: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise ArticleError(f"{where}: not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ArticleError(f"{where}: {info.st_size} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
        return source

    def listed_files(self) -> list[Path]:
        """The JSONL and every image of it that can be read, in its order: what a scrape of it reads (of a
        JSONL that cannot be read, the file alone: the scrape says what is wrong with it)."""
        files = [self.path]
        try:
            groups = read_pairs(self.path, self.group_by)
        except SourceError:
            return files
        for group in groups:
            for pair in group.rows:
                try:
                    files.append(self._image(pair))
                except ArticleError:
                    continue  # the scrape records it as its article's failure
        return files

    def fetch(self, item: PairGroup, out_dir: Path, policy: SelectionPolicy) -> tuple[ManifestRow, int]:
        row = ManifestRow.new(item.prefix, version=1, group=item.key, license_code=self.licence)
        pmcid, files = row.meta["pmcid"], []
        meta = ArticleMeta(pmcid=pmcid, version=1, pmid=None, doi=None, license_code=self.licence,
                           is_pmc_openaccess=True, is_historical_ocr=False, is_retracted=False,
                           xml=RemoteFile(str(self.path), None))
        reason = policy.rejection(meta)
        if reason:
            return row.skipped(reason), 0
        target, copied, names = out_dir / item.prefix, 0, []
        try:
            for pair in item.rows:
                source = self._image(pair)
                name = f"p{pair['_line']}-{_SAFE.sub('_', source.name)}"
                data = source.read_bytes()
                write_bytes_atomic(target / name, data)
                names.append(name)
                copied += len(data)
                files.append(file_row(name, data))
        except ArticleError as exc:
            return row.failed(str(exc), files), copied
        xml = _jats(item, names)
        write_bytes_atomic(target / f"{item.prefix}.xml", xml)
        files.append(file_row(f"{item.prefix}.xml", xml))  # the captions: an edit changes the row
        write_bytes_atomic(target / f"{item.prefix}.json", json.dumps(
            {"pmcid": pmcid, "version": 1, "license_code": self.licence, "is_pmc_openaccess": True,
             "source": self.path.name, "group": item.key}, sort_keys=True).encode())  # no checkout path: data/raw hashes alike anywhere
        return row.ok(files), copied
