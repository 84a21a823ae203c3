"""The scrape section of params.yaml as the scraper's inputs: where from, which articles, which days."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from ..errors import ParamsError
from ..params import Section
from .bucket import local_folder, open_bucket
from .inventory import InventorySource
from .legacy import LegacySource
from .local_pairs import LocalPairsSource
from .metadata import SelectionPolicy
from .scrape import ArticleSource, CloudSource, DateWindow

LAYOUTS = ("cloud", "inventory", "legacy", "pairs")


@dataclass(frozen=True)
class ScrapeRequest:
    source: ArticleSource
    policy: SelectionPolicy
    max_articles: int | None
    window: DateWindow
    selection: dict[str, Any]  # what a previous run must have asked for too, for its manifest to be reused

    @classmethod
    def from_params(cls, p: Section, root: Path) -> ScrapeRequest:
        """Checked before anything is fetched; relative sources are under the project ``root``."""
        licences = p.get("licences", (str, list))
        if isinstance(licences, str):
            p.choice("licences", ("commercial", "all_cc"))
        layout = p.choice("layout", LAYOUTS, "cloud")
        window = (_day(p, "since"), _day(p, "until"))
        if window != (None, None) and layout not in ("inventory", "legacy"):
            raise ParamsError(f"params: '{p.path}.since'/'{p.path}.until' need layout inventory or legacy, "
                              "whose listings date each article version")
        max_articles = p.get("max_articles", int, 0)
        selection = {"source": p.get("source", str), "layout": layout, "licences": licences,
                     "max_articles": max_articles, "window": list(window)}
        return cls(article_source(p, layout, root), SelectionPolicy.named(licences), max_articles or None, window,
                   selection)


def local_source(p: Section, root: Path) -> Path | list[Path] | None:
    """What a local source reads, for the inputs stage to digest (dvc.yaml cannot list a path params name):
    a mirror's folder, or a pairs JSONL and the images it lists; None for an http(s) source."""
    source = p.get("source", str)
    if p.choice("layout", LAYOUTS, "cloud") == "pairs":
        pairs = LocalPairsSource((root / source).resolve(), "", None)
        return pairs.listed_files() if pairs.path.is_file() else pairs.path
    return local_folder(source, root)


def article_source(p: Section, layout: str, root: Path) -> ArticleSource:
    if layout == "pairs":
        path = (root / p.get("source", str)).resolve()
        return LocalPairsSource(path, p.get("pairs_licence", str), p.get("pairs_group_by", str, None))
    bucket = open_bucket(p.get("source", str), root, timeout=p.positive("timeout_s", float),
                         retries=p.get("retries", int), rate_limit=p.get("rate_limit", float, 0.0))
    if layout == "inventory":
        folder = p.get("inventory", str, "latest")
        return InventorySource(bucket, None if folder == "latest" else folder)
    if layout == "legacy":
        return LegacySource(bucket, p.get("file_list", str, "oa_file_list.csv"))
    return CloudSource(bucket)


def _day(p: Section, key: str) -> str | None:
    value = p.get(key, (str, date), None)
    text = value.isoformat() if isinstance(value, date) else value
    if text is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ParamsError(f"params: '{p.path}.{key}' must be a date YYYY-MM-DD or null, got {value!r}")
    return text
