"""DVC stage: fetch the selected PMC article versions into data/raw (+ manifest.jsonl, state.json).

``data/raw`` persists between runs (DVC ``persist: true``): files already there with the right md5
are not fetched again, and with the inventory layout versions unchanged since the last run are not
even looked at. ``state.json`` records the selection and the watermark (newest LastModified seen);
a run with another selection starts from the listing again.
"""
from __future__ import annotations

import json
import re
import time
from datetime import date
from typing import Any

import mlflow

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.io import read_jsonl, sweep_partial_writes, write_json_atomic, write_jsonl_atomic
from biomedclip_factory.params import Section, load_section
from biomedclip_factory.pmc.bucket import open_bucket
from biomedclip_factory.pmc.inventory import InventorySource
from biomedclip_factory.pmc.legacy import LegacySource
from biomedclip_factory.pmc.local_pairs import LocalPairsSource
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import ArticleSource, CloudSource, scrape
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary
from .task_runner import mapper_from_params

RAW = ROOT / "data" / "raw"


def article_source(p: Section) -> ArticleSource:
    layout = p.choice("layout", ("cloud", "inventory", "legacy", "pairs"), "cloud")
    if layout == "pairs":
        path = (ROOT / p.get("source", str)).resolve()
        return LocalPairsSource(path, p.get("pairs_licence", str), p.get("pairs_group_by", str, None))
    bucket = open_bucket(p.get("source", str), ROOT, timeout=p.positive("timeout_s", float),
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
        raise ParamsError(f"params: 'scrape.{key}' must be a date YYYY-MM-DD or null, got {value!r}")
    return text


def previous_manifest(selection: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The last run's rows, if it made the same selection from the same source."""
    try:
        state = json.loads((RAW / "state.json").read_text())
        return read_jsonl(RAW / "manifest.jsonl") if state.get("selection") == selection else None
    except (OSError, json.JSONDecodeError):
        return None


def main() -> None:
    p = load_section("scrape", ROOT / "params.yaml")
    source = p.get("source", str)
    licences = p.get("licences", (str, list))
    if isinstance(licences, str):
        p.choice("licences", ("commercial", "all_cc"))
    max_articles = p.get("max_articles", int, 0)
    articles = article_source(p)
    window = (_day(p, "since"), _day(p, "until"))
    if window != (None, None) and p.get("layout", str, "cloud") not in ("inventory", "legacy"):
        raise ParamsError("params: 'scrape.since'/'scrape.until' need layout inventory or legacy, "
                          "whose listings date each article version")
    mapper = mapper_from_params(p, "scrape")
    selection = {"source": source, "layout": p.get("layout", str, "cloud"), "licences": licences,
                 "max_articles": max_articles, "window": list(window)}
    with stage_run("scrape", ROOT, p.raw()):
        t0 = time.perf_counter()
        result = scrape(articles, RAW, SelectionPolicy.named(licences), max_articles or None, mapper=mapper,
                        previous=previous_manifest(selection), window=window)
        seconds = time.perf_counter() - t0
        for name in ("manifest.jsonl", "state.json"):  # a write a killed run left half done
            sweep_partial_writes(RAW, f"{name}.")
        write_jsonl_atomic(RAW / "manifest.jsonl", result.rows)
        watermark = max((r["last_modified"] for r in result.rows if r.get("last_modified")), default=None)
        write_json_atomic(RAW / "state.json", {"selection": selection, "watermark": watermark})
        metrics = {"articles_listed": len(result.rows), "articles_ok": result.count("ok"),
                   "articles_failed": result.count("failed"),
                   "articles_skipped": len(result.rows) - result.count("ok") - result.count("failed"),
                   "articles_fetched": result.fetched_articles, "versions_removed": len(result.removed),
                   "bytes_fetched": result.fetched_bytes, "articles_per_s": result.fetched_articles / max(seconds, 1e-9)}
        write_json_atomic(ROOT / "metrics" / "scrape.json", {**metrics, "watermark": watermark})
        mlflow.log_metrics(metrics)
    summary("scrape", len(result.rows), result.count("ok"), result.count("failed"), seconds, "articles")


if __name__ == "__main__":
    run_stage("scrape", main)
