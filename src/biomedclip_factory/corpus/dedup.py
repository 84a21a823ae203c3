"""Corpus-wide duplicate removal: identical image bytes, and near-identical images by perceptual hash.

The same figure recurs across PMC (reused panels, corrections, versions, publisher logos); a CLIP
batch that holds two copies with different captions teaches the model noise. Near duplicates are
found without comparing every pair: a 64-bit pHash is cut into ``d + 1`` bands, and two hashes
within Hamming distance ``d`` must agree exactly on at least one band (pigeonhole), so only pairs
sharing a band are compared. The first pair in ``pair_id`` order is kept, so the result does not
depend on the order articles were processed in.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from .align import article_of

HASH_BITS = 64
MAX_DISTANCE = HASH_BITS // 2 - 1  # beyond it "near" means unrelated (random hashes differ in ~32 bits)


def _bands(value: int, count: int) -> list[tuple[int, int]]:
    """(band index, band bits) for ``count`` near-equal slices of a HASH_BITS-bit value."""
    edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
    return [(i, (value >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]


class NearDuplicateIndex:
    """Perceptual hashes seen so far, answering "is there one within ``max_distance`` bits?"."""

    def __init__(self, max_distance: int) -> None:
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}], got {max_distance}")
        self.max_distance = max_distance
        self._buckets: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)

    def find(self, phash: int) -> str | None:
        """The key of an indexed hash within the distance of ``phash``, or None."""
        for band in _bands(phash, self.max_distance + 1):
            for other, key in self._buckets.get(band, ()):
                if (phash ^ other).bit_count() <= self.max_distance:
                    return key
        return None

    def add(self, phash: int, key: str) -> None:
        for band in _bands(phash, self.max_distance + 1):
            self._buckets[band].append((phash, key))


def deduplicate(pairs: list[dict[str, Any]], near_max_distance: int | None) -> tuple[list[dict], list[dict]]:
    """Keep the first of each exact (sha256) or near (pHash within ``near_max_distance``) duplicate.

    ``near_max_distance`` None turns near-duplicate removal off. Returns (kept, rejects); each
    reject names the pair it duplicates.
    """
    exact: dict[str, str] = {}
    near = NearDuplicateIndex(near_max_distance) if near_max_distance is not None else None
    kept, rejects = [], []
    for pair in sorted(pairs, key=lambda p: p["pair_id"]):
        first = exact.setdefault(pair["sha256"], pair["pair_id"])
        reason = "duplicate_image" if first != pair["pair_id"] else None
        if reason is None and near is not None:
            phash = int(pair["phash"], 16)
            first = near.find(phash) or pair["pair_id"]
            reason = "near_duplicate_image" if first != pair["pair_id"] else None
            if reason is None:
                near.add(phash, pair["pair_id"])
        if reason is None:
            kept.append(pair)
        else:
            rejects.append({"article": article_of(pair), "fig_id": pair["fig_id"],
                            "reason": reason, "detail": first})
    return kept, rejects
