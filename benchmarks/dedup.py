"""Benchmark: corpus-wide near-duplicate search (pHash within 4 bits) as the corpus grows.

Ours (``dedup.near_pairs``: multi-part exact keys, sorted in numpy) vs the banded index this
project used before (``d + 1`` bands of ~13 bits, Python dict buckets, one hash at a time), on the
same random 64-bit hashes with 1% planted near copies. Ratio at the largest size both run, target
≥ 10; then ours alone at PMC-like sizes, and how each one's time grows when the corpus doubles
(2.0 is linear, 4.0 quadratic).

    .venv/bin/python benchmarks/dedup.py [--sizes 100000,200000,400000] [--large 1000000,4000000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from biomedclip_factory.corpus.dedup import near_pairs  # noqa: E402

DISTANCE = 4


def banded_index_count(hashes: list[int], distance: int) -> int:
    """The previous implementation: how many hashes are within ``distance`` of an earlier kept one."""
    edges = [round(i * 64 / (distance + 1)) for i in range(distance + 2)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    dropped = 0
    for value in hashes:
        bands = [(i, (value >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
        if any((value ^ other).bit_count() <= distance for band in bands for other in buckets.get(band, ())):
            dropped += 1
            continue
        for band in bands:
            buckets[band].append(value)
    return dropped


def corpus(size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    hashes = rng.integers(0, 2**63, size=size, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size, np.uint64)
    planted = np.arange(0, size - 1, 100)
    flips = np.zeros(len(planted), dtype=np.uint64)
    for _ in range(DISTANCE):  # up to DISTANCE distinct bits (a repeat cancels: some copies are closer)
        flips ^= np.uint64(1) << rng.integers(0, 64, len(planted), dtype=np.uint64)
    hashes[planted + 1] = hashes[planted] ^ flips
    return hashes


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,200000,400000", help="sizes both run on")
    ap.add_argument("--large", default="1000000,4000000", help="sizes only ours runs on")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    large = [int(s) for s in args.large.split(",") if s]
    ours, baseline = {}, {}
    for size in sizes:
        hashes = corpus(size)
        ours[size] = seconds(lambda: near_pairs(hashes, DISTANCE))
        as_ints = [int(h) for h in hashes]
        baseline[size] = seconds(lambda: banded_index_count(as_ints, DISTANCE))
    for size in large:
        hashes = corpus(size)
        ours[size] = seconds(lambda: near_pairs(hashes, DISTANCE))

    def growth(times: dict[int, float]) -> dict[str, float]:
        keys = sorted(times)
        return {f"{a}->{b}": round(times[b] / times[a], 2) for a, b in zip(keys, keys[1:])}

    top = max(sizes)
    print(json.dumps({"benchmark": "dedup", "baseline": "the previous banded index (d+1 bands, dict buckets)",
                      "ratio": round(baseline[top] / ours[top], 1), "target": 10, "at_size": top,
                      "seconds": {"ours": {k: round(v, 2) for k, v in ours.items()},
                                  "baseline": {k: round(v, 2) for k, v in baseline.items()}},
                      "growth_per_size_step": {"ours": growth(ours), "baseline": growth(baseline)}}))


if __name__ == "__main__":
    main()
