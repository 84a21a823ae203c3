"""Visual question answering, the paper's third evaluation, on VQA-RAD-style data for any CLIP scored.

Both CLIP towers stay frozen: the image and the question are embedded once (cached per image), and
a small fusion head — an MLP over [image, question, image × question] — is trained to classify the
answer over the answer list. It is the light baseline a factory can run on every model in seconds,
not the paper's METER-style fusion transformer over patch and token sequences (72.7% overall on
VQA-RAD), so it measures how much answer-relevant information the embeddings carry, comparably
across models, rather than reproducing that figure.

Records follow the VQA-RAD/MEVF layout: ``qid``, ``image_name``, ``question``, ``answer``,
``answer_type`` (CLOSED/OPEN, case and stray spaces ignored). Answers, of the records and of the list
alike, are normalised as MEVF built VQA-RAD's answer list (``normalised_answer``). A record with a
missing field or image, or whose image cannot be decoded, is skipped and reported; so is a training
answer outside the list; a test answer outside the list stays in the score (it cannot be answered,
as in the literature) and is reported too.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .embed import Encoder, shown
from .tasks import VqaTask

FIELDS = ("qid", "image_name", "question", "answer", "answer_type")

# The VQA evaluation's answer normalisation, as MEVF's preprocess_answer applies it to VQA-RAD (its
# answer_all_list.json holds "liver" for "The liver", "chest xray" for "Chest X-ray", "not sure" for "Not sure.").
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PERIOD = re.compile(r"\.(?!\d)")  # what MEVF's period_strip removes in effect: a period not before a digit
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")


def normalised_answer(answer: str) -> str:
    """An answer as MEVF wrote VQA-RAD's answer list: punctuation dropped (next to a space, or anywhere in an
    answer with a thousands comma) or made a space, periods not before a digit dropped, lower case, number
    words as digits, no articles, no commas, "x ray" as "xray". (The VQA code's contraction table is left out:
    no VQA-RAD answer has one.)"""
    text, thousands = answer, DIGIT_COMMA_DIGIT.search(answer) is not None
    for mark in PUNCTUATION:
        gone = thousands or f"{mark} " in answer or f" {mark}" in answer
        text = text.replace(mark, "" if gone else " ")
    words = [NUMBER_WORDS.get(w, w) for w in PERIOD.sub("", text).lower().split()]
    return " ".join(w for w in words if w not in ARTICLES).replace(",", "").replace("x ray", "xray")


@dataclass(frozen=True)
class QA:
    qid: str
    image: str
    question: str
    answer: str  # normalised_answer
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
        records.append(QA(qid, str(row["image_name"]), str(row["question"]), normalised_answer(str(row["answer"])),
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


def _embed_images(encoder: Encoder, records: list[QA], images: Path, batch_size: int
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each image once (the test split's are mostly the train split's), by name; what could not be decoded."""
    names = sorted({r.image for r in records})
    embedded = encoder.embed_files([images / name for name in names], batch_size)
    return dict(zip([names[i] for i in embedded.kept], embedded.vectors)), embedded.problems


def _embed(encoder: Encoder, records: list[QA], cache: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([cache[r.image] for r in records]), encoder.embed_texts([r.question for r in records])


def accuracy(predicted: list[str], records: list[QA]) -> dict[str, float]:
    """Closed, open and overall accuracy, as VQA papers report them."""
    def share(rows: list[tuple[str, QA]]) -> float:
        return sum(p == r.answer for p, r in rows) / len(rows) if rows else float("nan")
    pairs = list(zip(predicted, records))
    return {"closed": share([(p, r) for p, r in pairs if r.closed]),
            "open": share([(p, r) for p, r in pairs if not r.closed]), "overall": share(pairs)}


def evaluate_vqa(encoder: Encoder, task: VqaTask, batch_size: int) -> dict:
    try:
        answers = [normalised_answer(str(a)) for a in json.loads(task.answers.read_text())]
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
    cache, unreadable = _embed_images(encoder, train + test, task.images, batch_size)
    problems += [f"image unreadable, its questions skipped: {p}" for p in unreadable]
    train, test = [r for r in train if r.image in cache], [r for r in test if r.image in cache]
    if not train or not test:
        raise DataError(f"vqa '{task.name}': no usable train or test records ({len(problems)} problems: "
                        f"{'; '.join(problems[:3])})")
    train_image, train_question = _embed(encoder, train, cache)
    test_image, test_question = _embed(encoder, test, cache)
    labels, names = torch.tensor([index[r.answer] for r in train]), list(index)

    def answers(train_images: torch.Tensor, test_images: torch.Tensor) -> list[str]:
        head = train_head(train_images, train_question, labels, len(index), task)
        with torch.no_grad():
            return [names[int(i)] for i in head(test_images, test_question).argmax(dim=1)]

    # The same head seeing no image (its image features all zero): what the question's wording alone
    # answers. VQA-RAD's questions give much away ("Is there ...?" is yes or no), so a head can beat the
    # commonest-answer baseline without looking; the image's worth is the gap to this row.
    blind = answers(torch.zeros_like(train_image), torch.zeros_like(test_image))
    closed = sum(r.closed for r in test)
    return {**accuracy(answers(train_image, test_image), test), "baseline": baseline(train, test),
            "question_only": accuracy(blind, test), "train_questions": len(train),
            "test_questions": len(test), "questions": {"closed": closed, "open": len(test) - closed, "overall": len(test)},
            "images": len(cache), "answers": len(index), "problems": problems}


def baseline(train: list[QA], test: list[QA]) -> dict[str, float]:
    """What answering without looking scores: for closed and for open questions alike, always the commonest
    training answer of that kind (VQA-RAD's open "axial" scores ~0.06, where a uniform guess among its ~430
    open answers would claim 0.002 and make any head look far above chance)."""
    def majority(closed: bool) -> tuple[float, int]:
        asked = [r for r in test if r.closed == closed]
        commonest = Counter(r.answer for r in train if r.closed == closed).most_common(1)
        if not asked or not commonest:
            return float("nan"), len(asked)
        return sum(r.answer == commonest[0][0] for r in asked) / len(asked), len(asked)

    (closed, n_closed), (open_, n_open) = majority(True), majority(False)
    overall = (n_closed * (closed if n_closed else 0) + n_open * (open_ if n_open else 0)) / len(test)
    return {"closed": closed, "open": open_, "overall": overall}
