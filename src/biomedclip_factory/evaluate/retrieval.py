"""Image↔text retrieval recall@K over a gallery of paired embeddings (pair i ↔ pair i)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import torch


def ranks_of_truth(similarity: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of the best-scored right answer for each query row; ties count against the query.

    The right answers are the query's own pair and, with ``groups`` (the same caption), every pair of its
    group: a caption finds its figure when it ranks any image it captions first, as COCO-style recall
    counts many-to-one ground truth. Pessimistic ties keep a degenerate model (all scores equal) at
    chance instead of perfect.
    """
    groups = torch.arange(similarity.shape[0]) if groups is None else groups
    same = groups[None, :] == groups[:, None]
    truth = similarity.masked_fill(~same, float("-inf")).max(dim=1, keepdim=True).values  # a NaN stays NaN
    return (~(similarity < truth) & ~same).sum(dim=1)  # a NaN counts against


def best_right_answers(queries: torch.Tensor, gallery: torch.Tensor, groups: torch.Tensor,
                       own: torch.Tensor) -> torch.Tensor:
    """Each query's best score among its right answers, from ``own`` (its scores with its own pair) and,
    for a caption shared by several pairs, its scores with every pair of that caption."""
    truth = own.clone()
    shared = torch.nonzero(torch.bincount(groups)[groups] > 1).flatten()
    if len(shared):
        by_group = shared[torch.argsort(groups[shared], stable=True)]
        _, sizes = torch.unique_consecutive(groups[by_group], return_counts=True)
        for members in torch.split(by_group, sizes.tolist()):
            scores = queries[members] @ gallery[members].T
            truth[members] = torch.maximum(own[members], scores.max(dim=1).values)
    return truth


def ranks_in_blocks(queries: torch.Tensor, gallery: torch.Tensor, block: int = 4096,
                    groups: torch.Tensor | None = None) -> torch.Tensor:
    """``ranks_of_truth(queries @ gallery.T, groups)`` without the n×n matrix, ``block`` rows by ``block``
    columns at a time: the paper profile's 1% test split is 150k pairs, a 90 GB similarity matrix."""
    n = queries.shape[0]
    groups = torch.arange(n) if groups is None else groups
    own = torch.cat([(queries[start:start + block] @ gallery[start:start + block].T).diagonal()
                     for start in range(0, n, block)])
    truth = best_right_answers(queries, gallery, groups, own)
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, block):
        rows, own_groups, row_truth = queries[start:start + block], groups[start:start + block, None], \
            truth[start:start + block, None]
        above = torch.zeros(rows.shape[0], dtype=torch.long)
        for column in range(0, n, block):
            scores = rows @ gallery[column:column + block].T
            above += (~(scores < row_truth) & (groups[None, column:column + block] != own_groups)).sum(dim=1)
        ranks[start:start + block] = above
    return ranks


def caption_groups(captions: Sequence[Hashable]) -> torch.Tensor:
    """One id per distinct caption (as the text tower reads it: its token ids): pairs of the same caption
    (boilerplate such as "PRISMA flow diagram.", or panels whose shared figure caption fills the context)
    are each other's right answers, and identical texts embed identically, so without this every such
    image would rank its own caption below its copies."""
    ids: dict[Hashable, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions], dtype=torch.long)


def chance_recalls(groups: torch.Tensor, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Each recall of a model that ranks at random, per direction, when pairs share captions (``groups``;
    MedPix's cases: one caption, several images). A caption's right answers are its ``k`` images: it
    scores when any is in the top K, 1 - C(n-k, K) / C(n, K). An image's are the tied copies of its
    caption, and every other caption's copies rank together: see ``_image_to_text_chance``. With no
    shared caption both are K / n."""
    n = len(groups)
    counts = Counter(torch.bincount(groups).tolist())  # caption size → how many captions
    counts.pop(0, None)
    queries = {size: size * many for size, many in counts.items()}  # each pair of a caption is a query
    out: dict[str, dict[str, float]] = {"image_to_text": {}, "text_to_image": {}}
    for k in ks:
        to_text = _image_to_text_chance(counts, k)
        missed = {size: math.prod(max(0, n - k - j) / (n - j) for j in range(size)) for size in counts}
        out["image_to_text"][f"R@{k}"] = sum(q * to_text[size] for size, q in queries.items()) / n
        out["text_to_image"][f"R@{k}"] = sum(q * (1 - missed[size]) for size, q in queries.items()) / n
    return out


def _image_to_text_chance(counts: Counter, k: int) -> dict[int, float]:
    """P(rank < k) for an image whose caption has each size in ``counts`` (caption size → how many captions):
    its caption takes a uniform place among the G distinct ones, and its rank is the number of texts, copies
    counted, of the p captions above it, a uniform p-subset of the others. Summed over p < k, counting the
    p-subsets whose copies add up to less than k (a small polynomial product: sizes and p are below k)."""
    captions = sum(counts.values())
    chance = {}
    for own in counts:
        others = counts.copy()
        others[own] -= 1
        ways = [[0] * k for _ in range(k)]  # ways[p][t]: p-subsets of the other captions holding t texts
        ways[0][0] = 1
        for size, many in others.items():
            if size >= k or many == 0:
                continue
            grown = [[0] * k for _ in range(k)]
            for p in range(k):
                for t in range(k):
                    for j in range(0, k - p):
                        if not ways[p][t] or t + size * j >= k:
                            break
                        grown[p + j][t + size * j] += ways[p][t] * math.comb(many, j)
            ways = grown
        chance[own] = sum(sum(ways[p]) / math.comb(captions - 1, p) for p in range(min(k, captions))) / captions
    return chance


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    return _recalls(ranks_of_truth(similarity), ks)


def _recalls(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    return {f"R@{k}": float((ranks < k).float().mean()) for k in ks}


# The ranking rule's version, kept with every score: a champion scored under another rule is scored again
# (2: a pair of the truth's own caption is not counted against it; 3: it is a right answer, the best one
# counts).
PROTOCOL = 3


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      block: int = 4096, captions: Sequence[Hashable] | None = None) -> dict:
    """Both directions with the gallery size, the chance level of each recall per direction and the ranking
    rule (``PROTOCOL``); with ``captions``, a pair of the same caption as the truth is a right answer too."""
    n = image_emb.shape[0]
    if n == 0:
        return {"gallery_size": 0}
    images, texts = image_emb.float(), text_emb.float()
    groups = caption_groups(captions) if captions is not None else torch.arange(n)
    return {
        "gallery_size": n,
        "image_to_text": _recalls(ranks_in_blocks(images, texts, block, groups), ks),
        "text_to_image": _recalls(ranks_in_blocks(texts, images, block, groups), ks),
        "chance": chance_recalls(groups, ks),
        "protocol": PROTOCOL,
    }
