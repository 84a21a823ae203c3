"""Retrieval and classification metrics against hand-computed cases."""
from __future__ import annotations

import pytest
import torch

from biomedclip_factory.evaluate.retrieval import (PROTOCOL, caption_groups, ranks_in_blocks, ranks_of_truth,
                                                   recall_at_k, retrieval_metrics)
from biomedclip_factory.evaluate.zeroshot import classification_metrics


def test_perfect_reversed_and_tied_rankings():
    perfect = torch.eye(4)
    assert recall_at_k(perfect, (1, 2)) == {"R@1": 1.0, "R@2": 1.0}
    reversed_ = torch.tensor([[0.0, 1, 2, 3], [1, 0.5, 2, 3], [3, 2, 1, 0.5], [3, 2, 1, 0]])
    assert ranks_of_truth(reversed_).tolist() == [3, 3, 2, 3]
    assert recall_at_k(reversed_, (1, 3)) == {"R@1": 0.0, "R@3": 0.25}
    tied = torch.ones(4, 4)  # a model that scores everything equally is at the bottom, not perfect
    assert recall_at_k(tied, (1, 4)) == {"R@1": 0.0, "R@4": 1.0}
    broken = torch.full((4, 4), float("nan"))  # a model that scores nothing is at the bottom too
    assert recall_at_k(broken, (1, 4)) == {"R@1": 0.0, "R@4": 1.0}
    assert ranks_in_blocks(broken, torch.eye(4), 3).tolist() == [3, 3, 3, 3]


def test_retrieval_reports_both_directions_gallery_and_chance():
    img = torch.eye(3)  # one-hot images: similarity[i][j] = text_j[i]
    txt = torch.tensor([[3.0, 1, 0], [0, 1, 2], [1, 0, 2]])
    # similarity = [[3, 0, 1], [1, 1, 0], [0, 2, 2]]
    m = retrieval_metrics(img, txt, ks=(1, 2))
    assert m["gallery_size"] == 3 and m["protocol"] == PROTOCOL
    assert m["chance"] == {d: {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3)}
                           for d in ("image_to_text", "text_to_image")}
    # rows: i0 truth 3 first; i1 truth 1 tied with a 1 → rank 1; i2 truth 2 tied with a 2 → rank 1
    assert m["image_to_text"] == {"R@1": pytest.approx(1 / 3), "R@2": 1.0}
    # columns: t0 [3,1,0] first; t1 [0,1,2] second; t2 [1,0,2] first
    assert m["text_to_image"] == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}


def test_block_ranks_equal_the_whole_matrix_ties_included():
    torch.manual_seed(0)
    images, texts = torch.randn(23, 8), torch.randn(23, 8)
    texts[5] = texts[6] = texts[7]  # exact ties across block edges
    images[:4] = images[4]
    for block in (1, 4, 5, 23, 64):
        assert torch.equal(ranks_in_blocks(images, texts, block), ranks_of_truth(images @ texts.T))
        assert torch.equal(ranks_in_blocks(texts, images, block), ranks_of_truth(texts @ images.T))
    tied = torch.ones(9, 4)
    assert retrieval_metrics(tied, tied, ks=(1, 9), block=4)["image_to_text"] == {"R@1": 0.0, "R@9": 1.0}


def test_pairs_of_one_caption_are_each_others_right_answers():
    """Boilerplate captions ("PRISMA flow diagram.") embed identically: a model that finds them is right,
    though with pessimistic ties each such image would rank its own caption below the copies."""
    torch.manual_seed(0)
    images, texts = torch.randn(10, 8), torch.randn(10, 8)
    texts[[2, 5, 8]] = images[2]  # three pairs of one caption; the three images alike to it
    images[[5, 8]] = images[2] + 0.01 * torch.randn(2, 8)
    texts[[0, 1, 3, 4, 6, 7, 9]] = images[[0, 1, 3, 4, 6, 7, 9]]  # a perfect model otherwise
    images, texts = torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(texts, dim=1)
    captions = [f"caption {i}" for i in range(10)]
    captions[5] = captions[8] = captions[2]
    alone = retrieval_metrics(images, texts, ks=(1,), block=3)
    assert alone["image_to_text"]["R@1"] < 1.0  # copies of the caption tie with the truth
    together = retrieval_metrics(images, texts, ks=(1,), block=3, captions=captions)
    assert together["image_to_text"] == together["text_to_image"] == {"R@1": 1.0}
    groups = caption_groups(captions)
    assert groups.tolist() == [0, 1, 2, 3, 4, 2, 5, 6, 2, 7]
    for block in (1, 3, 10):
        assert torch.equal(ranks_in_blocks(images, texts, block, groups), ranks_of_truth(images @ texts.T, groups))


def test_a_caption_finds_its_figure_through_any_image_it_captions():
    """Text→image with one caption on three images: ranking another of its images first is a hit, though
    an unrelated image sits between that one and the pair's own."""
    images = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    caption = torch.tensor([0.9, 0.0, 0.3, 0.5])  # image 0 best, then 3 (unrelated), then 2 (its own pair)
    texts = torch.stack([caption, torch.tensor([0.0, 1, 0, 0]), caption, torch.tensor([0.0, 0, 0, 1])])
    groups = caption_groups(["shared", "b", "shared", "d"])
    expected = [0, 0, 0, 0]  # text 2's right answers are images 0 and 2: image 0 ranks first
    assert ranks_of_truth(texts @ images.T, groups).tolist() == expected
    for block in (1, 2, 4):
        assert ranks_in_blocks(texts, images, block, groups).tolist() == expected
    assert ranks_of_truth(texts @ images.T).tolist() == [0, 0, 2, 0]  # without the caption, text 2 misses


def test_classification_metrics_balanced_and_chance():
    logits = torch.tensor([[2.0, 0], [2, 0], [2, 0], [0, 2]])
    labels = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(logits, labels, 2)
    assert (m["accuracy"], m["balanced_accuracy"], m["auroc"]) == (1.0, 1.0, 1.0)
    assert m["chance"] == {"accuracy": 0.75, "balanced_accuracy": 0.5, "auroc": 0.5}
    m = classification_metrics(torch.tensor([[2.0, 0]] * 4), labels, 2)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5
    # a set holding 2 of 3 classes: always answering one of them scores 0.5, and that is its chance
    m = classification_metrics(torch.tensor([[2.0, 0, 0]] * 4), labels, 3)
    assert m["balanced_accuracy"] == m["chance"]["balanced_accuracy"] == 0.5


def test_chance_counts_every_right_answer_a_query_has():
    """Random rankings, measured: a caption shared by k images has k chances in text→image; an image's right
    answers are tied copies of one caption, so it is ranked against n - k + 1 candidates."""
    from biomedclip_factory.evaluate.retrieval import chance_recalls

    captions = ["a"] * 5 + ["b"] * 2 + [f"c{i}" for i in range(13)]  # n = 20
    groups = caption_groups(captions)
    chance = chance_recalls(groups, (1, 3))
    rng = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    texts = torch.stack([torch.nn.functional.normalize(torch.randn(8, generator=rng), dim=0) for _ in captions])
    by_caption = {c: texts[i] for i, c in reversed(list(enumerate(captions)))}
    texts = torch.stack([by_caption[c] for c in captions])  # one caption, one embedding
    hits = {d: {1: 0, 3: 0} for d in ("image_to_text", "text_to_image")}
    trials = 3000
    for _ in range(trials):
        images = torch.nn.functional.normalize(torch.randn(20, 8, generator=rng), dim=1)
        for direction, (q, g) in {"image_to_text": (images, texts), "text_to_image": (texts, images)}.items():
            ranks = ranks_of_truth(q @ g.T, groups)
            for k in (1, 3):
                hits[direction][k] += float((ranks < k).float().mean())
    for direction in hits:
        for k in (1, 3):
            assert hits[direction][k] / trials == pytest.approx(chance[direction][f"R@{k}"], abs=0.01), (direction, k)
    assert chance["text_to_image"]["R@1"] > 1.5 * chance["image_to_text"]["R@1"] > 1.5 / 20
    alone = chance_recalls(torch.arange(20), (1, 3))
    assert alone == {d: {"R@1": pytest.approx(1 / 20), "R@3": pytest.approx(3 / 20)} for d in alone}
