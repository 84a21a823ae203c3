"""Image↔text retrieval recall@K over a gallery of paired embeddings (pair i ↔ pair i)."""
from __future__ import annotations

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
    """Both directions with the gallery size, the chance level of each recall and the ranking rule
    (``PROTOCOL``); with ``captions``, a pair of the same caption as the truth is a right answer too."""
    n = image_emb.shape[0]
    if n == 0:
        return {"gallery_size": 0}
    images, texts = image_emb.float(), text_emb.float()
    groups = caption_groups(captions) if captions is not None else None
    return {
        "gallery_size": n,
        "image_to_text": _recalls(ranks_in_blocks(images, texts, block, groups), ks),
        "text_to_image": _recalls(ranks_in_blocks(texts, images, block, groups), ks),
        "chance": {f"R@{k}": min(1.0, k / n) for k in ks},
        "protocol": PROTOCOL,
    }
