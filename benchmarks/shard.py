"""Benchmark: how the shard stage takes each shard's rows from the memory-mapped pairs table.

Ours (``RowTaker``: per record batch, then reassembled in shard order) vs pyarrow's own
``Table.take`` on the same table and the same shuffled shard-sized index blocks. The table is
synthetic (PMC-like caption and mentions sizes), written as the align stage writes it (50,000
rows per row group) and mapped as the shard stage maps it. Rows/s ratio, target ≥ 10: at PMC-15M
scale ``Table.take`` copies whole columns per call.

    .venv/bin/python benchmarks/shard.py [--rows 1000000] [--shard-size 1000] [--shards 40]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.corpus.records import PAIR_SCHEMA, image_path, make_pair_id  # noqa: E402
from biomedclip_factory.corpus.table import ROW_GROUP, memory_mapped  # noqa: E402
from biomedclip_factory.shards.writer import RowTaker  # noqa: E402


def rate(take, blocks: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for block in blocks:
        take(block)
    return sum(map(len, blocks)) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=40, help="shard-sized blocks timed per path")
    args = ap.parse_args()
    n = args.rows
    ids = [make_pair_id(f"PMC{i}.1", f"F{i % 7}") for i in range(n)]
    table = pa.table({"pair_id": ids, "pmcid": [f"PMC{i}" for i in range(n)],
                      "pmid": [str(i) for i in range(n)], "fig_id": [f"F{i % 7}" for i in range(n)],
                      "label": ["Figure 1"] * n, "caption": ["figure caption " * 60] * n,
                      "mentions": [["Figure 1 shows the cohort."] * 3] * n,
                      "image": [image_path(i) for i in ids], "width": [512] * n,
                      "height": [384] * n, "sha256": ["0" * 64] * n, "phash": ["0" * 16] * n,
                      "license_code": ["CC BY"] * n, "split": ["train"] * n}, schema=PAIR_SCHEMA)
    order = np.random.default_rng(0).permutation(n)
    blocks = [order[k:k + args.shard_size] for k in range(0, args.shard_size * args.shards, args.shard_size)]
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / "pairs.parquet", row_group_size=ROW_GROUP)
        del table
        mapped = memory_mapped(Path(tmp) / "pairs.parquet", Path(tmp) / "pairs.arrow")
        ours = rate(RowTaker(mapped), blocks)
        baseline = rate(lambda block: mapped.take(block).to_pylist(), blocks)
    print(json.dumps({"benchmark": "shard", "baseline": "pyarrow Table.take on the memory-mapped table",
                      "ratio": round(ours / baseline, 1), "target": 10, "rows": n, "shard_size": args.shard_size,
                      "rows_per_s": {"ours": round(ours), "baseline": round(baseline)}}))


if __name__ == "__main__":
    main()
