"""The pairs table (``data/pairs/pairs.parquet``): written and read a row group at a time.

At PMC scale the table holds 15 M pairs, so no stage holds it whole: align writes it in row groups
of ``ROW_GROUP`` as the pairs stream out of its journal (``AlignedCorpus.export``), the tokenizer
streams the train captions back, and the shard stage reads it through a memory-mapped Arrow copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

TABLE_NAME = "pairs.parquet"
ROW_GROUP = 50_000  # pairs per Parquet row group: bounded memory, and the unit later stages stream by


def split_captions(table: Path, split: str) -> Iterator[str]:
    """The captions of ``split``, a row group at a time: PMC scale has millions of them."""
    for batch in pq.ParquetFile(table).iter_batches(columns=["caption", "split"]):
        columns = batch.to_pydict()
        yield from (c for c, s in zip(columns["caption"], columns["split"]) if s == split)


def memory_mapped(parquet: Path, arrow: Path) -> pa.Table:
    """``parquet``'s rows as an Arrow table backed by a memory-mapped file: the corpus stays on disk
    (the page cache holds what is being read), however many pairs it has. Copied one row group at a
    time."""
    with pq.ParquetFile(parquet) as source, pa.OSFile(str(arrow), "wb") as sink, \
            pa.ipc.new_file(sink, source.schema_arrow) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group))
    return pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
