"""DVC stage: fetch the selected PMC article versions into data/raw (+ manifest.jsonl, state.json).

``data/raw`` persists between runs (DVC ``persist: true``): files already there with the right md5
are not fetched again, and with the inventory layout versions unchanged since the last run are not
even looked at. ``state.json`` records the selection and the watermark (newest LastModified seen);
a run with another selection starts from the listing again.
"""
from __future__ import annotations

import time
from argparse import Namespace

import mlflow

from biomedclip_factory.io import write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.pmc.scrape import previous_manifest, scrape, write_manifest
from biomedclip_factory.pmc.selection import ScrapeRequest
from biomedclip_factory.task_runner import mapper_from_params
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary


def main(a: Namespace) -> None:
    p = load_section("scrape", ROOT / "params.yaml")
    request, mapper = ScrapeRequest.from_params(p, ROOT), mapper_from_params(p, "scrape")
    with stage_run("scrape", ROOT, p.raw()):
        t0 = time.perf_counter()
        result = scrape(request.source, a.raw, request.policy, request.max_articles, mapper=mapper,
                        previous=previous_manifest(a.raw, request.selection), window=request.window)
        seconds = time.perf_counter() - t0
        watermark = write_manifest(a.raw, result, request.selection)
        metrics = {"articles_listed": len(result.rows), "articles_ok": result.count("ok"),
                   "articles_failed": result.count("failed"),
                   "articles_skipped": len(result.rows) - result.count("ok") - result.count("failed"),
                   "articles_fetched": result.fetched_articles, "versions_removed": len(result.removed),
                   "articles_kept_after_failure": len(result.kept_after_failure),
                   "bytes_fetched": result.fetched_bytes, "articles_per_s": result.fetched_articles / max(seconds, 1e-9)}
        if result.kept_after_failure:
            prefix, why = next(iter(result.kept_after_failure.items()))
            print(f"scrape: {len(result.kept_after_failure)} articles could not be fetched again; their last good "
                  f"fetch stays (e.g. {prefix}: {why})", flush=True)
        write_json_atomic(a.metrics, {**metrics, "watermark": watermark})
        mlflow.log_metrics(metrics)
    summary("scrape", len(result.rows), result.count("ok"), result.count("failed"), seconds, "articles")


if __name__ == "__main__":
    run_stage("scrape", main, ("raw", "metrics"))
