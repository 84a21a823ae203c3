"""DVC stage: scraped articles → data/pairs (pairs.parquet, images/, rejects.jsonl)."""
from __future__ import annotations

import shutil
import time
from collections import Counter

import mlflow
import pandas as pd

from biomedclip_factory.corpus.align import AlignConfig, align_corpus
from biomedclip_factory.corpus.dedup import MAX_DISTANCE
from biomedclip_factory.corpus.journal import AlignJournal, article_digest
from biomedclip_factory.corpus.stats import caption_length_histogram, pairs_per_article_histogram
from biomedclip_factory.errors import DataError, ParamsError
from biomedclip_factory.io import read_jsonl, write_csv_atomic, write_json_atomic, write_jsonl_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary
from .task_runner import mapper_from_params

RAW = ROOT / "data" / "raw"
PAIRS = ROOT / "data" / "pairs"
JOURNAL = ROOT / "data" / "align_journal"  # per-article results kept across runs (resume, incremental)


def main() -> None:
    p = load_section("align", ROOT / "params.yaml")
    split = p.section("split")
    ratios = {str(k): float(v) for k, v in split.get("ratios", dict).items()}
    near = p.get("near_duplicate_distance", int, None)
    if near is not None and not 0 <= near <= MAX_DISTANCE:
        raise ParamsError(f"params: 'align.near_duplicate_distance' must be 0..{MAX_DISTANCE} bits or null, got {near}")
    aspect = p.get("max_aspect_ratio", float, None)
    if aspect is not None and aspect < 1:
        raise ParamsError(f"params: 'align.max_aspect_ratio' must be >= 1 or null, got {aspect}")
    cfg = AlignConfig(max_side=p.positive("max_side"), jpeg_quality=p.positive("jpeg_quality"),
                      min_caption_chars=p.get("min_caption_chars", int), min_side=p.get("min_side", int),
                      split_ratios=ratios, split_salt=split.get("salt", str, ""), max_aspect_ratio=aspect,
                      near_duplicate_max_distance=near, mentions=p.get("mentions", bool, True))
    manifest = RAW / "manifest.jsonl"
    if not manifest.is_file():
        raise DataError(f"align: {manifest} is missing (run the scrape stage)")
    digests = {r["prefix"]: article_digest(r) for r in read_jsonl(manifest) if r["status"] == "ok"}
    prefixes = list(digests)
    mapper = mapper_from_params(p, "align")
    with stage_run("align", ROOT, p.raw()):
        t0 = time.perf_counter()
        staging = PAIRS.with_name("pairs.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)  # also when no figure survives: an empty table is still a table
        journal = AlignJournal(JOURNAL, cfg, digests)
        reused = sum(map(journal.holds, prefixes))
        pairs, rejects, figures = align_corpus(RAW, prefixes, staging, cfg, mapper=mapper, journal=journal)
        pd.DataFrame(pairs, columns=PAIR_COLUMNS).to_parquet(staging / "pairs.parquet", index=False)
        write_jsonl_atomic(staging / "rejects.jsonl", rejects)
        shutil.rmtree(PAIRS, ignore_errors=True)
        staging.rename(PAIRS)
        seconds = time.perf_counter() - t0
        by_reason = Counter(r["reason"] for r in rejects)
        by_split = Counter(pr["split"] for pr in pairs)
        metrics = {"articles": len(prefixes), "articles_reused": reused,
                   "articles_aligned_per_s": (len(prefixes) - reused) / max(seconds, 1e-9),
                   "figures": figures, "pairs": len(pairs), "rejects": len(rejects),
                   "pairs_per_s": len(pairs) / max(seconds, 1e-9),
                   "rejects_by_reason": dict(by_reason), "pairs_by_split": dict(by_split)}
        write_json_atomic(ROOT / "metrics" / "align.json", metrics)
        write_csv_atomic(ROOT / "plots" / "align_caption_length.csv", caption_length_histogram(pr["caption"] for pr in pairs))
        write_csv_atomic(ROOT / "plots" / "align_pairs_per_article.csv", pairs_per_article_histogram(pairs))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    summary("align", figures, len(pairs), len(rejects), seconds, "figures")


PAIR_COLUMNS = ["pair_id", "pmcid", "pmid", "fig_id", "label", "caption", "mentions", "image", "width", "height",
                "sha256", "phash", "license_code", "split"]

if __name__ == "__main__":
    run_stage("align", main)
