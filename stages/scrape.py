"""DVC stage: fetch the selected PMC article versions into data/raw (+ manifest.jsonl)."""
from __future__ import annotations

import time

import mlflow

from biomedclip_factory.io import write_json_atomic, write_jsonl_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.pmc.bucket import open_bucket
from biomedclip_factory.pmc.legacy import LegacySource
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import ArticleSource, CloudSource, scrape
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary
from .task_runner import mapper_from_params

RAW = ROOT / "data" / "raw"


def main() -> None:
    p = load_section("scrape", ROOT / "params.yaml")
    source = p.get("source", str)
    licences = p.get("licences", (str, list))
    if isinstance(licences, str):
        p.choice("licences", ("commercial", "all_cc"))
    max_articles = p.get("max_articles", int, 0)
    bucket = open_bucket(source, ROOT, timeout=p.positive("timeout_s", float), retries=p.get("retries", int),
                         rate_limit=p.get("rate_limit", float, 0.0))
    layout = p.choice("layout", ("cloud", "legacy"), "cloud")
    articles: ArticleSource = CloudSource(bucket) if layout == "cloud" else \
        LegacySource(bucket, p.get("file_list", str, "oa_file_list.csv"))
    mapper = mapper_from_params(p, "scrape")
    with stage_run("scrape", ROOT, p.raw()):
        t0 = time.perf_counter()
        result = scrape(articles, RAW, SelectionPolicy.named(licences), max_articles or None, mapper=mapper)
        seconds = time.perf_counter() - t0
        write_jsonl_atomic(RAW / "manifest.jsonl", result.rows)
        metrics = {"articles_listed": len(result.rows), "articles_ok": result.count("ok"),
                   "articles_failed": result.count("failed"),
                   "articles_skipped": len(result.rows) - result.count("ok") - result.count("failed"),
                   "bytes_fetched": result.fetched_bytes, "articles_per_s": len(result.rows) / max(seconds, 1e-9)}
        write_json_atomic(ROOT / "metrics" / "scrape.json", metrics)
        mlflow.log_metrics(metrics)
    summary("scrape", len(result.rows), result.count("ok"), result.count("failed"), seconds, "articles")


if __name__ == "__main__":
    run_stage("scrape", main)
