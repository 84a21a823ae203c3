"""A WordPiece vocabulary learnt by BPE merges, identical from run to run.

``tokenizers``' WordPiece trainer numbers the ``##x`` continuation symbols in hash-map order and
breaks count ties by those numbers, so the same captions give a different vocabulary (and a
different model) on every run. Here ties break on the symbols' text, so a rerun of the tokenizer
stage reproduces its output byte for byte. Words are split as the BERT tokenizer that later encodes
them does (HF's ``BertNormalizer`` + ``BertPreTokenizer``), run once per distinct
whitespace-separated chunk rather than over the whole text, which is where the time would go.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from tokenizers import normalizers, pre_tokenizers
from tqdm import tqdm

PREFIX = "##"


def count_words(texts: Iterable[str], lowercase: bool) -> Counter[str]:
    """How often each BERT pre-token occurs in ``texts``."""
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(text.split())
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(chunk)):
            counts[word] += n
    return counts


def _pairs(symbols: list[str]) -> Iterator[tuple[str, str]]:
    return zip(symbols, symbols[1:])


def _merge(symbols: list[str], a: str, b: str, merged: str) -> list[str]:
    """``symbols`` with each (a, b), left to right, replaced by ``merged`` (``list.index`` finds each a)."""
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        try:
            j = symbols.index(a, i)
        except ValueError:
            break
        if j + 1 < n and symbols[j + 1] == b:
            out += symbols[i:j]
            out.append(merged)
            i = j + 2
        else:
            out += symbols[i:j + 1]
            i = j + 1
    out += symbols[i:]
    return out


def learn_vocab(word_counts: Counter[str], vocab_size: int, min_frequency: int, special_tokens: list[str],
                progress: bool = False) -> list[str]:
    """Specials, then every character (word-initial and ``##`` forms, sorted), then merged pieces.

    Each step merges the most frequent adjacent pair; equal counts go to the smaller (a, b) text.
    Stops at ``vocab_size`` tokens or when no pair occurs ``min_frequency`` times.
    """
    continuation = {c: PREFIX + c for c in {c for w in word_counts for c in w[1:]}}  # one object per symbol
    words = [[w[0]] + [continuation[c] for c in w[1:]] for w in word_counts]
    freqs = list(word_counts.values())
    alphabet = sorted({s for w in words for s in w} - set(special_tokens))
    vocab = list(special_tokens) + alphabet
    known = set(vocab)
    pair_count: defaultdict[tuple[str, str], int] = defaultdict(int)
    pair_words: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (symbols, freq) in enumerate(zip(words, freqs)):
        for pair in _pairs(symbols):
            pair_count[pair] += freq
            pair_words[pair].add(i)
    heap = [(-count, a, b) for (a, b), count in pair_count.items()]
    heapq.heapify(heap)
    bar = tqdm(total=max(vocab_size - len(vocab), 0), desc="tokenizer merges", unit="token", disable=not progress)
    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_count.get((a, b), 0)
        if count != -neg:  # stale: only rises are pushed as they happen, so a fallen count is re-queued here
            if 0 < count < -neg:
                heapq.heappush(heap, (-count, a, b))
            continue
        if count < min_frequency:
            break
        merged = a + b[len(PREFIX):]
        if merged not in known:  # a second spelling of a piece would leave a gap in the ids
            known.add(merged)
            vocab.append(merged)
            bar.update()
        delta: defaultdict[tuple[str, str], int] = defaultdict(int)
        for i in pair_words.pop((a, b)):
            old = words[i]
            new = _merge(old, a, b, merged)
            if len(new) == len(old):
                continue  # an earlier merge in this word already consumed the pair
            for pair in _pairs(old):
                delta[pair] -= freqs[i]
            for pair in _pairs(new):
                delta[pair] += freqs[i]
                pair_words[pair].add(i)
            words[i] = new
        del pair_count[(a, b)]
        for pair, change in delta.items():
            if pair == (a, b) or not change:
                continue
            pair_count[pair] += change
            if pair_count[pair] <= 0:
                del pair_count[pair]
            elif change > 0:
                heapq.heappush(heap, (-pair_count[pair], *pair))
    bar.close()
    return vocab
