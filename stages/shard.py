"""DVC stage: data/pairs → data/shards/<split>/<split>-%06d.tar + sizes.json per split."""
from __future__ import annotations

import tempfile
import time
from argparse import Namespace
from pathlib import Path

import mlflow

from biomedclip_factory.corpus.table import TABLE_NAME, memory_mapped
from biomedclip_factory.errors import DataError
from biomedclip_factory.io import sweep_partial_writes, write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.shards.layout import MANIFEST
from biomedclip_factory.shards.writer import write_split
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary


def main(a: Namespace) -> None:
    p = load_section("shard", ROOT / "params.yaml")
    shard_size, seed = p.positive("shard_size"), p.get("seed", int)
    splits = list(load_section("align", ROOT / "params.yaml").section("split").get("ratios", dict))
    table, scratch = a.pairs / TABLE_NAME, a.shards.parent
    if not table.is_file():
        raise DataError(f"shard: {table} is missing (run the align stage)")
    sweep_partial_writes(scratch, "shard.")  # the table copy of a killed run
    with stage_run("shard", ROOT, p.raw()), tempfile.TemporaryDirectory(dir=scratch, prefix=".shard.",
                                                                        suffix=".tmp") as tmp:
        t0 = time.perf_counter()
        pairs = memory_mapped(table, Path(tmp) / "pairs.arrow")
        manifest = {split: write_split(pairs, a.pairs, a.shards, split, shard_size, seed) for split in splits}
        write_json_atomic(a.shards / MANIFEST, manifest)
        seconds = time.perf_counter() - t0
        metrics = {f"{split}_samples": m["samples"] for split, m in manifest.items()}
        metrics.update(shards=sum(m["shards"] for m in manifest.values()),
                       bytes=sum(m["bytes"] for m in manifest.values()),
                       samples_per_s=pairs.num_rows / max(seconds, 1e-9))
        write_json_atomic(a.metrics, metrics)
        mlflow.log_metrics(metrics)
    summary("shard", pairs.num_rows, sum(m["samples"] for m in manifest.values()), 0, seconds, "samples")


if __name__ == "__main__":
    run_stage("shard", main, ("pairs", "shards", "metrics"))
