"""Image↔text retrieval recall@K over a gallery of paired embeddings (pair i ↔ pair i)."""
from __future__ import annotations

import torch


def ranks_of_truth(similarity: torch.Tensor) -> torch.Tensor:
    """0-based rank of the true candidate for each query row; ties count against the query.

    Pessimistic ties keep a degenerate model (all scores equal) at chance instead of perfect.
    """
    truth = similarity.diagonal().unsqueeze(1)
    return (similarity >= truth).sum(dim=1) - 1


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    ranks = ranks_of_truth(similarity)
    return {f"R@{k}": float((ranks < k).float().mean()) for k in ks}


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Both directions with the gallery size and the chance level of each recall."""
    n = image_emb.shape[0]
    if n == 0:
        return {"gallery_size": 0}
    sim = image_emb.float() @ text_emb.float().T
    return {
        "gallery_size": n,
        "image_to_text": recall_at_k(sim, ks),
        "text_to_image": recall_at_k(sim.T, ks),
        "chance": {f"R@{k}": min(1.0, k / n) for k in ks},
    }
