"""Read-only access to a bucket in the PMC Cloud layout, over HTTP(S) or from a local folder.

Both kinds answer the same two questions — which article-version prefixes exist, and what bytes
does a key hold — so the scrape stage runs one code path against the live bucket, a mirror
served over HTTP, or a folder on disk (the bundled sample).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
from lxml import etree
from requests.adapters import HTTPAdapter

from ..errors import SourceError
from .polite import Backoff, RateLimiter, retry_after_seconds

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Bucket(Protocol):
    base: str

    def list_prefixes(self, prefix: str = "PMC") -> Iterator[str]:
        """Yield the "folders" starting with ``prefix`` (default: the ``PMC<id>.<ver>/`` article
        versions), without the trailing slash, in key order."""

    def read(self, key: str) -> bytes:
        """Return the bytes of ``key``; raise SourceError naming the key when it cannot."""


class HttpBucket:
    """An S3-compatible bucket over HTTP(S): ListObjectsV2 for listing, GET for objects.

    Every attempt waits for the shared rate limiter; 429/5xx, connection resets, timeouts and
    truncated bodies are retried with exponential backoff and jitter, honouring Retry-After
    (AWS answers 503 SlowDown under load; PMC_FORMATS.md section 1). Other statuses fail at once.
    """

    def __init__(self, base: str, timeout: float = 30.0, retries: int = 5, backoff: float = 0.5,
                 rate_limit: float = 0.0, max_retry_wait: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 ) -> None:
        self.base = base.rstrip("/")
        self.timeout, self.retries = timeout, retries
        self.limiter = RateLimiter(rate_limit)
        self.backoff = Backoff(backoff, max_retry_wait)
        self._sleep = sleep
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=64)  # retries are ours: each one is rate-limited
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "biomedclip-factory (+https://github.com/)"

    def _attempt(self, url: str, params: dict[str, str] | None) -> tuple[bytes | None, str, float | None]:
        """One GET: (body, "", None) on success, else (None, what went wrong, Retry-After seconds)."""
        self.limiter.acquire()
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
            body = resp.content
        except requests.RequestException as exc:  # reset, refused, timeout, body cut short (IncompleteRead)
            return None, f"{exc.__class__.__name__}: {exc}", None
        if resp.status_code in RETRY_STATUSES:
            return None, f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("Retry-After"))
        if resp.status_code != 200:
            raise SourceError(f"GET {url}: HTTP {resp.status_code}")
        return body, "", None  # a body shorter than its Content-Length raised above (urllib3 enforces it)

    def _get(self, url: str, params: dict[str, str] | None = None) -> bytes:
        for attempt in range(self.retries + 1):
            body, problem, retry_after = self._attempt(url, params)
            if body is not None:
                return body
            if attempt < self.retries:
                self._sleep(self.backoff.wait(attempt, retry_after))
        raise SourceError(f"GET {url}: {problem} (gave up after {self.retries + 1} attempts)")

    def read(self, key: str) -> bytes:
        return self._get(f"{self.base}/{key}")

    def list_prefixes(self, prefix: str = "PMC") -> Iterator[str]:
        token: str | None = None
        while True:
            params = {"list-type": "2", "delimiter": "/", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            body = self._get(self.base + "/", params)
            try:
                root = etree.fromstring(body)
            except etree.XMLSyntaxError as exc:
                raise SourceError(f"listing {self.base}: malformed ListObjectsV2 XML: {exc}") from exc
            for cp in root.iter(f"{S3_NS}CommonPrefixes", "CommonPrefixes"):
                found = cp.findtext(f"{S3_NS}Prefix") or cp.findtext("Prefix") or ""
                if found:
                    yield found.rstrip("/")
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

    def list_prefixes(self, prefix: str = "PMC") -> Iterator[str]:
        parent, _, stem = prefix.rpartition("/")
        folder = self.root / parent
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                if entry.is_dir() and entry.name.startswith(stem):
                    yield f"{parent}/{entry.name}" if parent else entry.name

    def read(self, key: str) -> bytes:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise SourceError(f"key escapes the source folder: {key}")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {key} in the source folder: {exc.strerror}") from exc  # no checkout path


def local_folder(base: str, project_root: Path = Path(".")) -> Path | None:
    """Where the source ``base`` lies on this machine: a ``file://`` URL or a path relative to the project
    root; None for an http(s) URL."""
    parsed = urlparse(base)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"{base}: a file:// URL names a path on this machine (file:///path), not on "
                              f"{parsed.netloc}")
        return Path(url2pathname(parsed.path))  # %20 → space
    if parsed.scheme:
        raise SourceError(f"unsupported source scheme '{parsed.scheme}' in {base}")
    return (project_root / base).resolve()


def open_bucket(base: str, project_root: Path = Path("."), **http_options: float) -> Bucket:
    """Open ``base``: an http(s) URL, a ``file://`` URL, or a path relative to the project root."""
    folder = local_folder(base, project_root)
    return HttpBucket(base, **http_options) if folder is None else LocalBucket(folder)  # type: ignore[arg-type]
