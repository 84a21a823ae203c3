"""Corpus-wide duplicate removal: identical image bytes, and near-identical images by perceptual hash.

The same figure recurs across PMC (reused panels, corrections, versions, publisher logos); a CLIP
batch that holds two copies with different captions teaches the model noise. Near duplicates are
found without comparing every pair (``near_pairs``: multi-part exact keys, sorted, in numpy). The
first pair in ``pair_id`` order is kept, so the result does not depend on the order articles were
processed in.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from .records import DedupKey, Reject

HASH_BITS = 64
MAX_DISTANCE = HASH_BITS // 2 - 1  # beyond it "near" means unrelated (random hashes differ in ~32 bits)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Every index pair ``(i, j)``, ``i < j``, of ``hashes`` (uint64) within ``max_distance`` bits,
    as an ``(n, 2)`` array sorted by ``j`` then ``i``.

    Each hash is cut into ``m = d + k`` parts; two hashes within ``d`` bits differ in at most ``d``
    parts, so they agree exactly on some ``k`` of them (pigeonhole). For every choice of ``k`` parts
    the hashes are sorted by those parts' bits and only runs of equal keys are compared; ``k`` is
    picked so that the keys are long enough for runs to stay short at this corpus size (two parts
    of ~21 bits each at the default 4 bits) — near-linear where one band per part (``k = 1``, 13-bit
    keys) would compare millions of hashes with each other at PMC-15M's 15 M figures.
    """
    if not 0 <= max_distance <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}], got {max_distance}")
    hashes = np.asarray(hashes, dtype=np.uint64)
    parts_total, matching = _layout(max_distance, len(hashes))
    edges = [round(i * HASH_BITS / parts_total) for i in range(parts_total + 1)]
    parts = [((hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1), hi - lo) for lo, hi in zip(edges, edges[1:])]
    found = [np.empty((0, 2), dtype=np.int64)]
    for combo in itertools.combinations(parts, matching):
        key = np.zeros(len(hashes), dtype=np.uint64)
        for values, width in combo:
            key = (key << np.uint64(width)) | values
        order = np.argsort(key)  # any order within a run: every pair in it is compared
        sorted_key = key[order]
        active = np.arange(len(hashes) - 1)
        gap = 1
        while len(active := active[active + gap < len(hashes)]):  # runs of equal keys, one gap at a time
            active = active[sorted_key[active] == sorted_key[active + gap]]
            a, b = order[active], order[active + gap]
            close = np.bitwise_count(hashes[a] ^ hashes[b]) <= max_distance
            found.append(np.stack([np.minimum(a, b)[close], np.maximum(a, b)[close]], axis=1))
            gap += 1
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]


def _layout(max_distance: int, count: int) -> tuple[int, int]:
    """(parts, parts that must match) with the least estimated work for ``count`` hashes: one sort
    (n log n) per choice of matching parts, plus the pairs that share a key by chance."""
    def work(matching: int) -> float:
        parts = max_distance + matching
        key_bits = HASH_BITS * matching / parts
        return math.comb(parts, matching) * (count * math.log2(count + 2) + count * count / 2 ** key_bits)

    options = [k for k in range(1, 9) if max_distance + k <= HASH_BITS]
    best = min(options, key=work)
    return max_distance + best, best


def deduplicate(pairs: Sequence[DedupKey], near_max_distance: int | None) -> tuple[list[DedupKey], list[Reject]]:
    """Keep the first of each exact (sha256) or near (pHash within ``near_max_distance``) duplicate.

    ``near_max_distance`` None turns near-duplicate removal off. Returns (kept, rejects), both in
    ``pair_id`` order; each reject names the pair it duplicates (for a near one, the earliest kept
    pair within the distance).
    """
    ordered = sorted(pairs, key=lambda p: p.pair_id)
    first_with: dict[str, str] = {}
    duplicate_of = [first_with.setdefault(p.sha256, p.pair_id) for p in ordered]
    survivors = [i for i, p in enumerate(ordered) if duplicate_of[i] == p.pair_id]
    near_of: dict[int, str] = {}
    if near_max_distance is not None and survivors:
        hashes = np.array([int(ordered[i].phash, 16) for i in survivors], dtype=np.uint64)
        kept = np.ones(len(survivors), dtype=bool)
        for j, i in near_pairs(hashes, near_max_distance)[:, ::-1]:  # by j, then the earliest i
            if kept[j] and kept[i]:  # i < j is settled by now: only a kept pair makes j a duplicate
                kept[j] = False
                near_of[survivors[j]] = ordered[survivors[i]].pair_id
    kept_pairs, rejects = [], []
    for index, pair in enumerate(ordered):
        if duplicate_of[index] != pair.pair_id:
            rejects.append(Reject(pair.article, pair.fig_id, "duplicate_image", duplicate_of[index]))
        elif index in near_of:
            rejects.append(Reject(pair.article, pair.fig_id, "near_duplicate_image", near_of[index]))
        else:
            kept_pairs.append(pair)
    return kept_pairs, rejects
