"""DVC stage: scraped articles → data/pairs (pairs.parquet, images/, rejects.jsonl)."""
from __future__ import annotations

import shutil
import time
from argparse import Namespace

import mlflow

from biomedclip_factory.corpus.align_config import AlignConfig
from biomedclip_factory.corpus.assemble import align_articles
from biomedclip_factory.corpus.journal import AlignJournal, article_digest
from biomedclip_factory.corpus.stats import caption_length_rows, pairs_per_article_rows
from biomedclip_factory.errors import DataError
from biomedclip_factory.io import replace_dir, write_csv_atomic, write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.pmc.manifest import MANIFEST, OK, iter_manifest
from biomedclip_factory.task_runner import mapper_from_params
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary


def main(a: Namespace) -> None:
    p = load_section("align", ROOT / "params.yaml")
    cfg = AlignConfig.from_params(p)
    if not (a.raw / MANIFEST).is_file():
        raise DataError(f"align: {a.raw / MANIFEST} is missing (run the scrape stage)")
    digests = {r.prefix: article_digest(r.row()) for r in iter_manifest(a.raw) if r.status == OK}
    prefixes = list(digests)
    mapper = mapper_from_params(p, "align")
    with stage_run("align", ROOT, p.raw()):
        t0 = time.perf_counter()
        staging = a.pairs.with_name(f"{a.pairs.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        journal = AlignJournal(a.journal, cfg, digests)  # per-article results kept across runs
        corpus = align_articles(a.raw, prefixes, cfg, journal, mapper)
        stats = corpus.export(staging)
        journal.close()
        replace_dir(staging, a.pairs)
        seconds = time.perf_counter() - t0
        metrics = {"articles": len(prefixes), "articles_reused": corpus.reused,
                   "articles_aligned_per_s": (len(prefixes) - corpus.reused) / max(seconds, 1e-9),
                   "figures": corpus.figures, "pairs": stats.pairs, "rejects": sum(corpus.reject_reasons.values()),
                   "pairs_per_s": stats.pairs / max(seconds, 1e-9),
                   "rejects_by_reason": dict(corpus.reject_reasons), "pairs_by_split": dict(stats.by_split)}
        write_json_atomic(a.metrics, metrics)
        write_csv_atomic(a.caption_plot, caption_length_rows(stats.caption_tokens))
        write_csv_atomic(a.articles_plot, pairs_per_article_rows(stats.per_article))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    summary("align", corpus.figures, stats.pairs, metrics["rejects"], seconds, "figures")


if __name__ == "__main__":
    run_stage("align", main, ("raw", "journal", "pairs", "metrics", "caption_plot", "articles_plot"))
