"""Visual question answering, the paper's third evaluation, on VQA-RAD-style data for any CLIP scored.

Both CLIP towers stay frozen: the image and the question are embedded once (cached per image), and
a small fusion head — an MLP over [image, question, image × question] — is trained to classify the
answer over the answer list. It is the light baseline a factory can run on every model in seconds,
not the paper's METER-style fusion transformer over patch and token sequences (72.7% overall on
VQA-RAD), so it measures how much answer-relevant information the embeddings carry, comparably
across models, rather than reproducing that figure.

Records follow the VQA-RAD/MEVF layout: ``qid``, ``image_name``, ``question``, ``answer``,
``answer_type`` (CLOSED/OPEN, case and stray spaces ignored). A record with a missing field or
image is skipped and reported by qid; a training answer outside the list is skipped and reported; a
test answer outside the list stays in the score (it cannot be answered, as in the literature) and is
reported too.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .embed import Encoder, shown
from .tasks import VqaTask

FIELDS = ("qid", "image_name", "question", "answer", "answer_type")


@dataclass(frozen=True)
class QA:
    qid: str
    image: str
    question: str
    answer: str  # lower-cased, stripped
    closed: bool


def read_records(path: Path, images: Path) -> tuple[list[QA], list[str]]:
    """The usable records of ``path`` and, by qid, what is wrong with the others."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"vqa: cannot read {path}: {exc}") from exc
    if not isinstance(raw, list):
        raise DataError(f"vqa: {path} must hold a JSON list of records")
    records, problems = [], []
    for i, row in enumerate(raw):
        qid = str(row.get("qid", f"#{i}")) if isinstance(row, dict) else f"#{i}"
        if not isinstance(row, dict) or any(not isinstance(row.get(f), (str, int)) for f in FIELDS):
            problems.append(f"{path.name} qid {qid}: malformed record (needs {', '.join(FIELDS)})")
            continue
        if not (images / str(row["image_name"])).is_file():
            problems.append(f"{path.name} qid {qid}: image {row['image_name']} not found in {shown(images)}")
            continue
        records.append(QA(qid, str(row["image_name"]), str(row["question"]), str(row["answer"]).strip().lower(),
                          str(row["answer_type"]).strip().upper() == "CLOSED"))
    return records, problems


class FusionHead(torch.nn.Module):
    """An MLP over [image, question, image × question] (frozen, L2-normalised CLIP embeddings), each
    feature standardised with the training set's mean and spread: embeddings of one model often differ
    in a few directions only, and the MLP should not depend on their scale."""

    def __init__(self, image: torch.Tensor, question: torch.Tensor, hidden: int, answers: int) -> None:
        super().__init__()
        fused = self.fuse(image, question)
        self.register_buffer("mean", fused.mean(dim=0))
        self.register_buffer("std", fused.std(dim=0).clamp_min(1e-6))
        self.net = torch.nn.Sequential(torch.nn.Linear(fused.shape[1], hidden), torch.nn.GELU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(hidden, answers))

    @staticmethod
    def fuse(image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, question, image * question], dim=1)

    def forward(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.net((self.fuse(image, question) - self.mean) / self.std)


def train_head(image: torch.Tensor, question: torch.Tensor, labels: torch.Tensor, answers: int, task: VqaTask
               ) -> FusionHead:
    """Full-batch AdamW on cross-entropy, seeded: the same head for the same embeddings."""
    torch.manual_seed(task.seed)
    head = FusionHead(image, question, task.hidden, answers)
    optimizer = torch.optim.AdamW(head.parameters(), lr=task.lr, weight_decay=1e-4)
    head.train()
    for _ in range(task.epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(image, question), labels).backward()
        optimizer.step()
    return head.eval()


def _embed(encoder: Encoder, records: list[QA], images: Path, cache: dict[str, torch.Tensor], batch_size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    missing = sorted({r.image for r in records} - cache.keys())
    if missing:  # the test split's images are mostly the train split's
        embedded = encoder.embed_files([images / name for name in missing], batch_size)
        if embedded.problems:
            raise DataError(f"VQA images unreadable: {'; '.join(embedded.problems[:3])}")
        cache.update(zip(missing, embedded.vectors))
    image = torch.stack([cache[r.image] for r in records])
    return image, encoder.embed_texts([r.question for r in records])


def accuracy(predicted: list[str], records: list[QA]) -> dict[str, float]:
    """Closed, open and overall accuracy, as VQA papers report them."""
    def share(rows: list[tuple[str, QA]]) -> float:
        return sum(p == r.answer for p, r in rows) / len(rows) if rows else float("nan")
    pairs = list(zip(predicted, records))
    return {"closed": share([(p, r) for p, r in pairs if r.closed]),
            "open": share([(p, r) for p, r in pairs if not r.closed]), "overall": share(pairs)}


def evaluate_vqa(encoder: Encoder, task: VqaTask, batch_size: int) -> dict:
    try:
        answers = [str(a).strip().lower() for a in json.loads(task.answers.read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"vqa '{task.name}': cannot read the answer list {task.answers}: {exc}") from exc
    index = {a: i for i, a in enumerate(dict.fromkeys(answers))}
    train, problems = read_records(task.train, task.images)
    test, test_problems = read_records(task.test, task.images)
    problems += [f"{task.train.name} qid {r.qid}: answer {r.answer!r} is not in the answer list"
                 for r in train if r.answer not in index]
    problems += test_problems + [f"{task.test.name} qid {r.qid}: answer {r.answer!r} is not in the answer list "
                                 "(scored as wrong)" for r in test if r.answer not in index]
    train = [r for r in train if r.answer in index]
    if not train or not test:
        raise DataError(f"vqa '{task.name}': no usable train or test records ({len(problems)} problems)")
    cache: dict[str, torch.Tensor] = {}
    train_image, train_question = _embed(encoder, train, task.images, cache, batch_size)
    test_image, test_question = _embed(encoder, test, task.images, cache, batch_size)
    head = train_head(train_image, train_question, torch.tensor([index[r.answer] for r in train]), len(index), task)
    with torch.no_grad():
        logits = head(test_image, test_question)
    names = list(index)
    predicted = [names[int(i)] for i in logits.argmax(dim=1)]
    closed = sum(r.closed for r in test)
    return {**accuracy(predicted, test), "baseline": baseline(train, test), "train_questions": len(train),
            "test_questions": len(test), "questions": {"closed": closed, "open": len(test) - closed, "overall": len(test)},
            "images": len(cache), "answers": len(index), "problems": problems}


def baseline(train: list[QA], test: list[QA]) -> dict[str, float]:
    """Closed: always the commonest closed training answer; open: a uniform guess among the open ones."""
    closed_test = [r for r in test if r.closed]
    majority = Counter(r.answer for r in train if r.closed).most_common(1)
    closed = sum(r.answer == majority[0][0] for r in closed_test) / len(closed_test) if closed_test and majority \
        else float("nan")
    open_answers = {r.answer for r in train if not r.closed}
    open_ = 1 / len(open_answers) if open_answers else float("nan")
    n_closed, n_open = len(closed_test), len(test) - len(closed_test)
    overall = (n_closed * (closed if n_closed else 0) + n_open * (open_ if n_open else 0)) / len(test)
    return {"closed": closed, "open": open_, "overall": overall}
