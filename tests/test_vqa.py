"""VQA on frozen CLIP embeddings: the head learns what is learnable, nothing more, and bad records are named."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.embed import Encoder
from biomedclip_factory.evaluate.vqa import VqaTask, evaluate_vqa

from .conftest import REPO, tiny_model_dir

QUESTIONS = ["is there a fracture?", "what organ is shown?", "is the image abnormal?", "which side is affected?"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    return Encoder.load(tiny_model_dir(tmp_path_factory.mktemp("vqa")))


def _toy(root: Path, shuffle: bool) -> VqaTask:
    """8 images x 4 questions; the answer is a fixed function of (image, question) — or, shuffled, of nothing."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (48, 48), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            root / "images" / f"img{i}.png")
    answers = ["yes", "no", "liver", "lung", "left", "right"]
    rows = []
    for i in range(8):
        for q, question in enumerate(QUESTIONS):
            closed = q in (0, 2)
            answer = ["yes", "no"][(i + q) % 2] if closed else answers[2 + (i * 3 + q) % 4]
            rows.append({"qid": len(rows), "image_name": f"img{i}.png", "question": question, "answer": answer,
                         "answer_type": "CLOSED" if closed else "OPEN"})
    test = [dict(r) for r in rows]
    if shuffle:  # answers independent of image and question, drawn afresh for the test set
        for row in rows + test:
            row["answer"] = rng.choice(["yes", "no"]) if row["answer_type"] == "CLOSED" else rng.choice(answers[2:])
    for name, data in (("train.json", rows), ("test.json", test), ("answers.json", answers)):
        (root / name).write_text(json.dumps(data))
    return VqaTask("toy", root / "images", root / "train.json", root / "test.json", root / "answers.json", epochs=400)


def test_the_head_learns_a_separable_toy_vqa(encoder, tmp_path):
    result = evaluate_vqa(encoder, _toy(tmp_path, shuffle=False), batch_size=8)
    assert (result["closed"], result["open"], result["overall"]) == (1.0, 1.0, 1.0)
    assert result["images"] == 8 and result["problems"] == []


def test_the_head_stays_at_chance_on_shuffled_answers(encoder, tmp_path):
    result = evaluate_vqa(encoder, _toy(tmp_path, shuffle=True), batch_size=8)
    assert result["overall"] < 0.6  # chance: 1/2 closed, 1/4 open; 32 questions
    assert result["baseline"]["open"] == 0.25


def test_bad_records_are_named_and_the_rest_runs(encoder, tmp_path):
    task = _toy(tmp_path, shuffle=False)
    rows = json.loads(task.train.read_text())
    rows += [{"qid": "gone", "image_name": "nowhere.png", "question": "q?", "answer": "yes", "answer_type": "CLOSED"},
             {"qid": "odd", "image_name": "img0.png", "question": "q?", "answer": "purple", "answer_type": "OPEN"},
             {"qid": "half", "image_name": "img0.png"}]
    task.train.write_text(json.dumps(rows))
    problems = evaluate_vqa(encoder, task, batch_size=8)["problems"]
    assert any("qid gone: image nowhere.png not found" in p for p in problems)
    assert any("qid odd: answer 'purple' is not in the answer list" in p for p in problems)
    assert any("qid half: malformed record" in p for p in problems)
    task.test.write_text("{}")
    with pytest.raises(DataError, match="must hold a JSON list"):
        evaluate_vqa(encoder, task, batch_size=8)


def test_the_shipped_vqa_rad_sample_runs(encoder):
    sample = REPO / "sample" / "vqa_rad"
    task = VqaTask("vqa_rad", sample / "images", sample / "trainset.json", sample / "testset.json",
                   sample / "answer_all_list.json", epochs=50)
    result = evaluate_vqa(encoder, task, batch_size=16)
    assert result["test_questions"] == 51 and result["images"] == 24
    assert 0 <= result["closed"] <= 1 and 0 < result["baseline"]["closed"] < 1
    assert all("not in the answer list" in p for p in result["problems"])  # VQA-RAD's own unanswerable ones
