"""DVC stage: scraped articles → data/pairs (pairs.parquet, images/, rejects.jsonl)."""
from __future__ import annotations

import itertools
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq

from biomedclip_factory.corpus.align import AlignConfig, article_of
from biomedclip_factory.corpus.assemble import AlignedCorpus, align_articles
from biomedclip_factory.corpus.dedup import MAX_DISTANCE
from biomedclip_factory.corpus.journal import AlignJournal, article_digest
from biomedclip_factory.corpus.stats import caption_length_rows, caption_tokens, pairs_per_article_rows
from biomedclip_factory.errors import DataError, ParamsError
from biomedclip_factory.io import (atomic_writer, iter_jsonl, replace_dir, write_csv_atomic, write_json_atomic,
                                   write_jsonl_atomic)
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
    raw_ratios = split.get("ratios", dict)
    if not raw_ratios or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in raw_ratios.values()):
        raise ParamsError(f"params: 'align.split.ratios' must map split names to numbers >= 0, got {raw_ratios!r}")
    ratios = {str(k): float(v) for k, v in raw_ratios.items()}
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
    digests = {r["prefix"]: article_digest(r) for r in iter_jsonl(manifest) if r["status"] == "ok"}
    prefixes = list(digests)
    mapper = mapper_from_params(p, "align")
    with stage_run("align", ROOT, p.raw()):
        t0 = time.perf_counter()
        staging = PAIRS.with_name("pairs.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)  # also when no figure survives: an empty table is still a table
        journal = AlignJournal(JOURNAL, cfg, digests)
        corpus = align_articles(RAW, prefixes, cfg, journal, mapper)
        stats = write_pairs(corpus, staging)
        write_jsonl_atomic(staging / "rejects.jsonl", corpus.rejects())
        journal.close()
        replace_dir(staging, PAIRS)
        seconds = time.perf_counter() - t0
        metrics = {"articles": len(prefixes), "articles_reused": corpus.reused,
                   "articles_aligned_per_s": (len(prefixes) - corpus.reused) / max(seconds, 1e-9),
                   "figures": corpus.figures, "pairs": stats.pairs, "rejects": sum(corpus.reject_reasons.values()),
                   "pairs_per_s": stats.pairs / max(seconds, 1e-9),
                   "rejects_by_reason": dict(corpus.reject_reasons), "pairs_by_split": dict(stats.by_split)}
        write_json_atomic(ROOT / "metrics" / "align.json", metrics)
        write_csv_atomic(ROOT / "plots" / "align_caption_length.csv", caption_length_rows(stats.caption_tokens))
        write_csv_atomic(ROOT / "plots" / "align_pairs_per_article.csv", pairs_per_article_rows(stats.per_article))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    summary("align", corpus.figures, stats.pairs, metrics["rejects"], seconds, "figures")


PAIR_SCHEMA = pa.schema([("pair_id", pa.string()), ("pmcid", pa.string()), ("pmid", pa.string()),
                         ("fig_id", pa.string()), ("label", pa.string()), ("caption", pa.string()),
                         ("mentions", pa.list_(pa.string())), ("image", pa.string()), ("width", pa.int64()),
                         ("height", pa.int64()), ("sha256", pa.string()), ("phash", pa.string()),
                         ("license_code", pa.string()), ("split", pa.string())])
ROW_GROUP = 50_000  # pairs per Parquet row group: bounded memory, and the unit later stages stream by


@dataclass
class PairStats:
    """What the metrics and plots need, counted while the pairs stream past."""
    pairs: int = 0
    by_split: Counter[str] = field(default_factory=Counter)
    caption_tokens: Counter[int] = field(default_factory=Counter)
    per_article: Counter[str] = field(default_factory=Counter)


def write_pairs(corpus: AlignedCorpus, staging: Path) -> PairStats:
    """pairs.parquet and the kept pairs' images (linked from the journal), one row group at a time."""
    stats = PairStats()
    with atomic_writer(staging / "pairs.parquet") as fh, pq.ParquetWriter(fh, PAIR_SCHEMA) as writer:
        pairs = corpus.pairs()
        while batch := list(itertools.islice(pairs, ROW_GROUP)):
            writer.write_table(pa.Table.from_pylist(batch, schema=PAIR_SCHEMA))
            corpus.journal.export_images(batch, staging)
            for pair in batch:
                stats.pairs += 1
                stats.by_split[pair["split"]] += 1
                stats.caption_tokens[caption_tokens(pair["caption"])] += 1
                stats.per_article[article_of(pair)] += 1
    return stats


if __name__ == "__main__":
    run_stage("align", main)
