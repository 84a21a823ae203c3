"""Article-version metadata JSON from the PMC Cloud bucket, and the licence/selection policy."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArticleError

COMMERCIAL_USE = frozenset({"CC0", "CC BY", "CC BY-SA", "CC BY-ND"})
ALL_CC = frozenset(COMMERCIAL_USE | {"CC BY-NC", "CC BY-NC-SA", "CC BY-NC-ND"})
_S3_URL = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>[^?]+)(?:\?md5=(?P<md5>[0-9a-fA-F]{32}))?$")


@dataclass(frozen=True)
class RemoteFile:
    key: str
    md5: str | None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ArticleMeta:
    pmcid: str
    version: int
    pmid: int | None
    doi: str | None
    license_code: str | None
    is_pmc_openaccess: bool
    is_historical_ocr: bool
    is_retracted: bool
    xml: RemoteFile
    media: tuple[RemoteFile, ...] = field(default_factory=tuple)

    @property
    def prefix(self) -> str:
        return f"{self.pmcid}.{self.version}"


def file_row(name: str, data: bytes) -> dict[str, Any]:
    """A manifest row's entry for one file of an article version (DESIGN: name, md5, bytes): what
    the next stages key their reuse on, so every source writes it the same way."""
    return {"name": name, "md5": hashlib.md5(data).hexdigest(), "bytes": len(data)}


def parse_s3_url(url: str, where: str) -> RemoteFile:
    m = _S3_URL.match(url) if isinstance(url, str) else None
    if not m:
        raise ArticleError(f"{where}: not an s3://bucket/key?md5= URL: {url!r}")
    return RemoteFile(m["key"], m["md5"].lower() if m["md5"] else None)


def parse_metadata(blob: bytes, where: str) -> ArticleMeta:
    """Parse one metadata JSON; ``where`` names the object in every error."""
    try:
        data: dict[str, Any] = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArticleError(f"{where}: malformed metadata JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArticleError(f"{where}: metadata JSON is not an object")
    try:
        pmcid, version = str(data["pmcid"]), int(data["version"])
        xml = parse_s3_url(data["xml_url"], where)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArticleError(f"{where}: metadata lacks a valid {exc}") from exc
    if not re.fullmatch(r"PMC\d+", pmcid):
        raise ArticleError(f"{where}: bad pmcid {pmcid!r}")
    for key, kind in (("license_code", str), ("doi", str), ("is_pmc_openaccess", bool), ("is_historical_ocr", bool),
                      ("is_retracted", bool), ("media_urls", list)):
        if data.get(key) is not None and not isinstance(data[key], kind):  # "false" would read as true
            raise ArticleError(f"{where}: metadata '{key}' is {type(data[key]).__name__} {data[key]!r:.80}, "
                               f"not {kind.__name__}")
    pmid = data.get("pmid")
    return ArticleMeta(
        pmcid=pmcid,
        version=version,
        pmid=int(pmid) if isinstance(pmid, (int, str)) and str(pmid).isdigit() else None,
        doi=data.get("doi"),
        license_code=data.get("license_code"),
        is_pmc_openaccess=bool(data.get("is_pmc_openaccess", False)),
        is_historical_ocr=bool(data.get("is_historical_ocr", False)),
        is_retracted=bool(data.get("is_retracted", False)),
        xml=xml,
        media=tuple(parse_s3_url(u, where) for u in data.get("media_urls") or ()),
    )


@dataclass(frozen=True)
class SelectionPolicy:
    """Which article versions to keep: licence set, OA only, no retracted, no historical OCR."""

    licences: frozenset[str]
    require_open_access: bool = True
    drop_historical_ocr: bool = True

    @classmethod
    def named(cls, name: str | list[str]) -> "SelectionPolicy":
        if isinstance(name, list):
            return cls(frozenset(name))
        return cls({"commercial": COMMERCIAL_USE, "all_cc": ALL_CC}[name])

    def rejection(self, meta: ArticleMeta) -> str | None:
        """The reason ``meta`` is not selected, or None when it is."""
        if meta.is_retracted:
            return "retracted"
        if self.require_open_access and not meta.is_pmc_openaccess:
            return "not_open_access"
        if self.drop_historical_ocr and meta.is_historical_ocr:
            return "historical_ocr"
        if meta.license_code not in self.licences:
            return f"licence_excluded:{meta.license_code}"
        return None
