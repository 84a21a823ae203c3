"""Read-only access to a bucket in the PMC Cloud layout, over HTTP(S) or from a local folder.

Both kinds answer the same two questions — which article-version prefixes exist, and what bytes
does a key hold — so the scrape stage runs one code path against the live bucket, a mirror
served over HTTP, or a folder on disk (the bundled sample).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

import requests
from lxml import etree
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import SourceError

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class Bucket(Protocol):
    base: str

    def list_prefixes(self) -> Iterator[str]:
        """Yield top-level ``PMC<id>.<ver>/`` prefixes (without the slash), in key order."""

    def read(self, key: str) -> bytes:
        """Return the bytes of ``key``; raise SourceError naming the key when it cannot."""


class HttpBucket:
    """An S3-compatible bucket over HTTP(S): ListObjectsV2 for listing, GET for objects.

    Retries with exponential backoff on 429/5xx and connection errors, honouring Retry-After
    (AWS answers 503 SlowDown under load; PMC_FORMATS.md section 1).
    """

    def __init__(self, base: str, timeout: float = 30.0, retries: int = 5, backoff: float = 0.5) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        retry = Retry(total=retries, backoff_factor=backoff, backoff_jitter=backoff / 2,
                      status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",),
                      respect_retry_after_header=True, raise_on_status=False)
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self.session.headers["User-Agent"] = "biomedclip-factory (+https://github.com/)"

    def _get(self, url: str, params: dict[str, str] | None = None) -> bytes:
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
            body = resp.content
        except requests.RequestException as exc:
            raise SourceError(f"GET {url}: {exc.__class__.__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise SourceError(f"GET {url}: HTTP {resp.status_code}")
        expected = resp.headers.get("Content-Length")
        if expected is not None and int(expected) != len(body):
            raise SourceError(f"GET {url}: truncated body ({len(body)} of {expected} bytes)")
        return body

    def read(self, key: str) -> bytes:
        return self._get(f"{self.base}/{key}")

    def list_prefixes(self) -> Iterator[str]:
        token: str | None = None
        while True:
            params = {"list-type": "2", "delimiter": "/", "prefix": "PMC"}
            if token:
                params["continuation-token"] = token
            body = self._get(self.base + "/", params)
            try:
                root = etree.fromstring(body)
            except etree.XMLSyntaxError as exc:
                raise SourceError(f"listing {self.base}: malformed ListObjectsV2 XML: {exc}") from exc
            for cp in root.iter(f"{S3_NS}CommonPrefixes", "CommonPrefixes"):
                prefix = cp.findtext(f"{S3_NS}Prefix") or cp.findtext("Prefix") or ""
                if prefix:
                    yield prefix.rstrip("/")
            truncated = (root.findtext(f"{S3_NS}IsTruncated") or root.findtext("IsTruncated")) == "true"
            token = root.findtext(f"{S3_NS}NextContinuationToken") or root.findtext("NextContinuationToken")
            if not truncated or not token:
                return


class LocalBucket:
    """A folder laid out like the bucket (e.g. the bundled sample mirror)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = str(root)
        if not root.is_dir():
            raise SourceError(f"source folder not found: {root}")

    def list_prefixes(self) -> Iterator[str]:
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and entry.name.startswith("PMC"):
                yield entry.name

    def read(self, key: str) -> bytes:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise SourceError(f"key escapes the source folder: {key}")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from exc


def open_bucket(base: str, project_root: Path = Path("."), **http_options: float) -> Bucket:
    """Open ``base``: an http(s) URL, a ``file://`` URL, or a path relative to the project root."""
    parsed = urlparse(base)
    if parsed.scheme in ("http", "https"):
        return HttpBucket(base, **http_options)  # type: ignore[arg-type]
    if parsed.scheme == "file":
        return LocalBucket(Path(parsed.path))
    if parsed.scheme:
        raise SourceError(f"unsupported source scheme '{parsed.scheme}' in {base}")
    return LocalBucket((project_root / base).resolve())
