"""Corpus shape for DVC plots: caption length and pairs per article, as small tables."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

from .align import article_of

# Word-level tokens (a run of word characters, or one punctuation mark): tokenizer-independent, so
# the plot exists before the tokenizer stage; WordPiece counts run ~1.2-1.5x higher on captions.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def caption_tokens(caption: str) -> int:
    return len(_TOKEN.findall(caption))


def caption_length_histogram(captions: Iterable[str], bin_width: int = 8, cap: int = 256) -> list[dict[str, int]]:
    """Rows ``{tokens: bin start, pairs: count}`` for every bin up to ``cap`` (the last holds ≥ cap)."""
    return caption_length_rows(Counter(map(caption_tokens, captions)), bin_width, cap)


def caption_length_rows(tokens: Counter[int], bin_width: int = 8, cap: int = 256) -> list[dict[str, int]]:
    """``caption_length_histogram`` from a count of captions per token length (kept while streaming)."""
    counts = Counter[int]()
    for length, n in tokens.items():
        counts[min(length, cap) // bin_width * bin_width] += n
    return [{"tokens": start, "pairs": counts.get(start, 0)} for start in range(0, cap + 1, bin_width)]


def pairs_per_article_histogram(pairs: Iterable[dict[str, Any]]) -> list[dict[str, int]]:
    """Rows ``{pairs_per_article: n, articles: how many articles gave n pairs}``, n ≥ 1."""
    return pairs_per_article_rows(Counter(map(article_of, pairs)))


def pairs_per_article_rows(per_article: Counter[str]) -> list[dict[str, int]]:
    """``pairs_per_article_histogram`` from a count of pairs per article (kept while streaming)."""
    spread = Counter(per_article.values())
    return [{"pairs_per_article": n, "articles": spread.get(n, 0)} for n in range(1, max(spread, default=0) + 1)]
