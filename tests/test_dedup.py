"""Near-duplicate search (multi-part pHash keys) against brute force, and the corpus-shape tables for DVC plots."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomedclip_factory.corpus.dedup import deduplicate, near_pairs
from biomedclip_factory.corpus.stats import caption_length_rows, caption_tokens, pairs_per_article_rows
from biomedclip_factory.corpus.records import DedupKey, Reject


def _flip(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(distance=st.integers(0, 10), seed=st.integers(0, 2**32), size=st.integers(0, 80))
def test_near_pairs_are_exactly_what_brute_force_finds(distance, seed, size):
    rng = random.Random(seed)
    base = [rng.getrandbits(64) for _ in range(size // 2)]
    # Near copies at distances around the threshold, plus unrelated hashes.
    hashes = base + [_flip(h, rng.sample(range(64), rng.randint(0, distance + 2))) for h in base]
    brute = {(i, j) for j in range(len(hashes)) for i in range(j) if (hashes[i] ^ hashes[j]).bit_count() <= distance}
    found = near_pairs(np.array(hashes, dtype=np.uint64), distance)
    assert {(int(i), int(j)) for i, j in found} == brute and len(found) == len(brute)
    assert [tuple(r) for r in found] == sorted(map(tuple, found), key=lambda r: (r[1], r[0]))


def test_greedy_keeps_what_a_one_by_one_scan_keeps():
    """The first of each group in pair_id order, and a pair near only a dropped one stays."""
    rng = random.Random(7)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    hashes += [_flip(h, rng.sample(range(64), rng.randint(0, 6))) for h in hashes for _ in range(2)]
    pairs = [_pair(f"PMC{i:04d}.1_F1", f"sha{i}", h) for i, h in enumerate(hashes)]
    kept, rejects = deduplicate(pairs, near_max_distance=4)
    scan: list[int] = []
    for h in hashes:
        if not any((h ^ k).bit_count() <= 4 for k in scan):
            scan.append(h)
    assert [int(p.phash, 16) for p in kept] == scan and len(rejects) == len(hashes) - len(scan)
    kept_ids = {p.pair_id for p in kept}
    assert all(r.detail in kept_ids and r.reason == "near_duplicate_image" for r in rejects)


def test_near_pairs_scale_past_the_banded_index():
    """200k random hashes with 2,000 planted near copies: all found, in seconds (the banded index
    compared every hash with ~25 others per band here, and N²/8192 at PMC scale)."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=200_000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    planted = np.arange(0, 200_000, 100)
    hashes[planted + 1] = hashes[planted] ^ np.uint64(0b1001_0000_0000_0000_0000_0000_0000_0000_1000_0000_0000_0000_0000_0000_0001_0000)
    found = {(int(i), int(j)) for i, j in near_pairs(hashes, 4)}
    assert {(int(p), int(p) + 1) for p in planted} <= found


def test_a_meaningless_distance_is_refused():
    with pytest.raises(ValueError, match="max_distance"):
        near_pairs(np.zeros(3, dtype=np.uint64), 40)


def _pair(pair_id: str, sha: str, phash: int) -> DedupKey:
    return DedupKey(pair_id, pair_id.split("_", 1)[1], sha, f"{phash:016x}", f"images/{pair_id}.jpg")


def test_first_in_pair_id_order_is_kept_whatever_the_input_order():
    pairs = [_pair("PMC2.1_F1", "b", 0b1011), _pair("PMC1.1_F_a", "a", 0b1000), _pair("PMC3.1_F1", "a", 0)]
    for ordering in (pairs, pairs[::-1]):
        kept, rejects = deduplicate(ordering, near_max_distance=2)
        assert [p.pair_id for p in kept] == ["PMC1.1_F_a"]
        assert rejects == [
            Reject("PMC2.1", "F1", "near_duplicate_image", "PMC1.1_F_a"),
            Reject("PMC3.1", "F1", "duplicate_image", "PMC1.1_F_a")]
    kept, rejects = deduplicate(pairs, near_max_distance=None)
    assert [p.pair_id for p in kept] == ["PMC1.1_F_a", "PMC2.1_F1"] and len(rejects) == 1


def test_caption_length_and_pairs_per_article_tables():
    assert caption_tokens("Axial CT (arrow), 5 mm.") == 9  # Axial CT ( arrow ) , 5 mm .
    rows = caption_length_rows(Counter(map(caption_tokens, ["one two", "a " * 20, "b " * 400])), bin_width=8, cap=32)
    assert rows == [{"tokens": 0, "pairs": 1}, {"tokens": 8, "pairs": 0}, {"tokens": 16, "pairs": 1},
                    {"tokens": 24, "pairs": 0}, {"tokens": 32, "pairs": 1}]
    pairs = [_pair("PMC1.1_F1", "x", 0), _pair("PMC1.1_F2", "y", 0), _pair("PMC2.1_F1", "z", 0),
             _pair("PMC3.1_F_1", "w", 0), _pair("PMC3.1_F_2", "v", 0), _pair("PMC3.1_F_3", "u", 0)]
    assert pairs_per_article_rows(Counter(p.article for p in pairs)) == [{"pairs_per_article": 1, "articles": 1},
                                                  {"pairs_per_article": 2, "articles": 1},
                                                  {"pairs_per_article": 3, "articles": 1}]
    assert pairs_per_article_rows(Counter()) == []
    assert [p.article for p in pairs[3:]] == ["PMC3.1"] * 3  # an id's article, underscores in the figure id
