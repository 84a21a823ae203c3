"""Near-duplicate index (banded pHash) against brute force, and the corpus-shape tables for DVC plots."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomedclip_factory.corpus.dedup import NearDuplicateIndex, deduplicate
from biomedclip_factory.corpus.stats import caption_length_histogram, caption_tokens, pairs_per_article_histogram


def _flip(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(distance=st.integers(0, 10), seed=st.integers(0, 2**32))
def test_index_finds_exactly_what_brute_force_finds(distance, seed):
    rng = random.Random(seed)
    base = [rng.getrandbits(64) for _ in range(30)]
    # Near copies at distances around the threshold, plus unrelated hashes.
    hashes = base + [_flip(h, rng.sample(range(64), rng.randint(0, distance + 2))) for h in base]
    index = NearDuplicateIndex(distance)
    kept: list[int] = []
    for h in hashes:
        brute = any((h ^ k).bit_count() <= distance for k in kept)
        assert (index.find(h) is not None) == brute
        if not brute:
            index.add(h, str(h))
            kept.append(h)


def test_index_rejects_a_meaningless_distance():
    with pytest.raises(ValueError, match="max_distance"):
        NearDuplicateIndex(40)


def _pair(pair_id: str, sha: str, phash: int) -> dict:
    return {"pair_id": pair_id, "fig_id": pair_id.split("_", 1)[1], "sha256": sha, "phash": f"{phash:016x}"}


def test_first_in_pair_id_order_is_kept_whatever_the_input_order():
    pairs = [_pair("PMC2.1_F1", "b", 0b1011), _pair("PMC1.1_F_a", "a", 0b1000), _pair("PMC3.1_F1", "a", 0)]
    for ordering in (pairs, pairs[::-1]):
        kept, rejects = deduplicate(ordering, near_max_distance=2)
        assert [p["pair_id"] for p in kept] == ["PMC1.1_F_a"]
        assert rejects == [
            {"article": "PMC2.1", "fig_id": "F1", "reason": "near_duplicate_image", "detail": "PMC1.1_F_a"},
            {"article": "PMC3.1", "fig_id": "F1", "reason": "duplicate_image", "detail": "PMC1.1_F_a"}]
    kept, rejects = deduplicate(pairs, near_max_distance=None)
    assert [p["pair_id"] for p in kept] == ["PMC1.1_F_a", "PMC2.1_F1"] and len(rejects) == 1


def test_caption_length_and_pairs_per_article_tables():
    assert caption_tokens("Axial CT (arrow), 5 mm.") == 9  # Axial CT ( arrow ) , 5 mm .
    rows = caption_length_histogram(["one two", "a " * 20, "b " * 400], bin_width=8, cap=32)
    assert rows == [{"tokens": 0, "pairs": 1}, {"tokens": 8, "pairs": 0}, {"tokens": 16, "pairs": 1},
                    {"tokens": 24, "pairs": 0}, {"tokens": 32, "pairs": 1}]
    pairs = [_pair("PMC1.1_F1", "x", 0), _pair("PMC1.1_F2", "y", 0), _pair("PMC2.1_F1", "z", 0),
             _pair("PMC3.1_F_1", "w", 0), _pair("PMC3.1_F_2", "v", 0), _pair("PMC3.1_F_3", "u", 0)]
    assert pairs_per_article_histogram(pairs) == [{"pairs_per_article": 1, "articles": 1},
                                                  {"pairs_per_article": 2, "articles": 1},
                                                  {"pairs_per_article": 3, "articles": 1}]
    assert pairs_per_article_histogram([]) == []
