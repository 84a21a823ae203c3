"""Corpus shape for DVC plots: caption length and pairs per article, as small tables."""
from __future__ import annotations

import re
from collections import Counter

# Word-level tokens (a run of word characters, or one punctuation mark): tokenizer-independent, so
# the plot exists before the tokenizer stage; WordPiece counts run ~1.2-1.5x higher on captions.
_TOKEN = re.compile(r"\w+|[^\w\s]")


def caption_tokens(caption: str) -> int:
    return len(_TOKEN.findall(caption))


def caption_length_rows(tokens: Counter[int], bin_width: int = 8, cap: int = 256) -> list[dict[str, int]]:
    """Rows ``{tokens: bin start, pairs: count}`` for every bin up to ``cap`` (the last holds ≥ cap), from a
    count of captions per token length (kept while the pairs stream past)."""
    counts = Counter[int]()
    for length, n in tokens.items():
        counts[min(length, cap) // bin_width * bin_width] += n
    return [{"tokens": start, "pairs": counts.get(start, 0)} for start in range(0, cap + 1, bin_width)]


def pairs_per_article_rows(per_article: Counter[str]) -> list[dict[str, int]]:
    """Rows ``{pairs_per_article: n, articles: how many articles gave n pairs}``, n ≥ 1."""
    spread = Counter(per_article.values())
    return [{"pairs_per_article": n, "articles": spread.get(n, 0)} for n in range(1, max(spread, default=0) + 1)]
