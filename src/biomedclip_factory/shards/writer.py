"""Write pairs into WebDataset tars per split, byte-identical for identical input.

Samples are ordered by a seeded shuffle (so one article's figures spread across shards), tar
member mtimes are fixed, and each split gets open_clip's ``sizes.json`` so its trainer reads our
shards unchanged (``layout``).
"""
from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..corpus.records import PAIR_SCHEMA, Pair
from ..io import write_bytes_atomic, write_json_atomic
from .layout import SIZES, sample_members, shard_name, shard_pattern


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(pairs: Iterable[Pair], pairs_dir: Path) -> bytes:
    buf = io.BytesIO()
    # PAX: USTAR's bytes for every name under 100 bytes, and a long one (a long figure id) still fits.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in pairs:
            for name, data in sample_members(p.shard_key, (pairs_dir / p.image).read_bytes(), p.sample_meta(),
                                             p.caption):
                _add(tar, name, data)
    return buf.getvalue()


class RowTaker:
    """Pairs of a many-batch table by row index, taken batch by batch.

    ``Table.take`` concatenates every chunk of a column first: on a memory-mapped PMC-scale table
    that is a copy of the whole column per shard (10k rows/s at 1 M rows, slower as it grows).
    """

    def __init__(self, table: pa.Table):
        self._batches = table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])

    def __call__(self, indices: np.ndarray) -> list[Pair]:
        batch_of = np.searchsorted(self._starts, indices, side="right") - 1
        pairs: dict[int, Pair] = {}
        for batch in np.unique(batch_of):
            where = np.nonzero(batch_of == batch)[0]
            rows = self._batches[batch].take(pa.array(indices[where] - self._starts[batch])).to_pylist()
            pairs.update(zip(where.tolist(), map(Pair.from_row, rows)))
        return [pairs[position] for position in range(len(indices))]


def write_split(pairs: pa.Table | Sequence[Pair], pairs_dir: Path, out_dir: Path, split: str,
                shard_size: int, seed: int) -> dict[str, Any]:
    """Write the shards of the rows of ``pairs`` in ``split``; returns its manifest entry (shards,
    samples, bytes, sha256).

    Only the split's pair ids are held in Python; each shard's rows are taken from ``pairs`` as it is
    written, so a memory-mapped Arrow table of PMC-15M's pairs stays on disk. ``sha256`` covers every
    shard's name and bytes in order: what the split holds, for pretrain to tell whether its
    checkpoints were trained on these very shards.
    """
    table = pairs if isinstance(pairs, pa.Table) else pa.Table.from_pylist([p.row() for p in pairs], schema=PAIR_SCHEMA)
    rows = (pc.indices_nonzero(pc.equal(table["split"], split)).to_numpy().astype(np.int64) if table.num_rows
            else np.array([], dtype=np.int64))
    take = RowTaker(table)
    pair_ids = table["pair_id"].take(rows).to_pylist()
    order = sorted(range(len(rows)), key=pair_ids.__getitem__)
    random.Random(f"{seed}:{split}").shuffle(order)
    split_dir = out_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob(shard_pattern(split)):
        stale.unlink()
    sizes: dict[str, int] = {}
    total_bytes = 0
    digest = hashlib.sha256()
    for index in range(0, len(order), shard_size):
        chunk = take(rows[order[index:index + shard_size]])
        name = shard_name(split, index // shard_size)
        data = _tar_bytes(chunk, pairs_dir)
        write_bytes_atomic(split_dir / name, data)
        digest.update(name.encode() + b"\0" + data)
        sizes[name] = len(chunk)
        total_bytes += len(data)
    write_json_atomic(split_dir / SIZES, sizes)
    return {"shards": len(sizes), "samples": len(order), "bytes": total_bytes, "sha256": digest.hexdigest()}
