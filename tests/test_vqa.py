"""VQA on frozen CLIP embeddings: the head learns what is learnable, nothing more, and bad records are named."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.embed import Encoder
from biomedclip_factory.evaluate.vqa import QA, VqaTask, baseline, evaluate_vqa, normalised_answer

from .conftest import REPO, tiny_model_dir

QUESTIONS = ["is there a fracture?", "what organ is shown?", "is the image abnormal?", "which side is affected?"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    return Encoder.load(tiny_model_dir(tmp_path_factory.mktemp("vqa")))


BASES = [(220, 40, 40), (40, 200, 60), (50, 60, 210), (230, 220, 60)]  # four kinds of image


def _toy(root: Path, shuffle: bool, by_question: bool = False) -> VqaTask:
    """Four kinds of image (base colours), each drawn anew with noise: 4 per kind to train on, 2 unseen
    ones per kind to test on. The answer is a fixed function of (kind, question) — or, shuffled, of nothing,
    or ``by_question``, of the question alone."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    answers = ["yes", "no", "liver", "lung", "left", "right"]
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for split, per_kind in (("train", 4), ("test", 2)):
        for kind, base in enumerate(BASES):
            for n in range(per_kind):
                name = f"{split}-{kind}-{n}.png"
                pixels = bytes(max(0, min(255, c + rng.randint(-12, 12))) for _ in range(40 * 40) for c in base)
                Image.frombytes("RGB", (40, 40), pixels).save(root / "images" / name)
                for q, question in enumerate(QUESTIONS):
                    closed = q in (0, 2)
                    seen = 0 if by_question else kind
                    answer = ["yes", "no"][(seen + q // 2) % 2] if closed else answers[2 + (seen + q) % 4]
                    if shuffle:  # independent of image and question
                        answer = rng.choice(["yes", "no"]) if closed else rng.choice(answers[2:])
                    rows[split].append({"qid": f"{split}{len(rows[split])}", "image_name": name, "question": question,
                                        "answer": answer, "answer_type": "CLOSED" if closed else "OPEN"})
    for name, data in (("train.json", rows["train"]), ("test.json", rows["test"]), ("answers.json", answers)):
        (root / name).write_text(json.dumps(data))
    return VqaTask("toy", root / "images", root / "train.json", root / "test.json", root / "answers.json", epochs=400)


def test_the_head_learns_a_separable_toy_vqa(encoder, tmp_path):
    result = evaluate_vqa(encoder, _toy(tmp_path, shuffle=False), batch_size=8)
    assert (result["closed"], result["open"], result["overall"]) == (1.0, 1.0, 1.0)
    assert result["images"] == 24 and result["test_questions"] == 32 and result["problems"] == []  # unseen images
    assert result["question_only"]["overall"] <= 0.5  # each question's answer depends on the image


def test_the_question_only_head_shows_what_the_wording_alone_answers(encoder, tmp_path):
    result = evaluate_vqa(encoder, _toy(tmp_path, shuffle=False, by_question=True), batch_size=8)
    assert result["question_only"] == {"closed": 1.0, "open": 1.0, "overall": 1.0}
    assert result["baseline"]["overall"] < 0.6  # the commonest answer is not enough: the wording is


def test_the_head_stays_at_chance_on_shuffled_answers(encoder, tmp_path):
    result = evaluate_vqa(encoder, _toy(tmp_path, shuffle=True), batch_size=8)
    assert result["overall"] < 0.6  # chance: 1/2 closed, 1/4 open; 32 questions on unseen images


def test_the_baseline_answers_every_question_with_the_commonest_training_answer_of_its_kind():
    def qa(answer: str, closed: bool) -> QA:
        return QA("q", "i.png", "?", answer, closed)

    train = [qa("yes", True), qa("yes", True), qa("no", True), qa("axial", False), qa("axial", False), qa("liver", False)]
    test = [qa("no", True), qa("no", True), qa("yes", True), qa("axial", False), qa("lung", False), qa("axial", False),
            qa("liver", False)]
    assert baseline(train, test) == {"closed": 1 / 3, "open": 0.5, "overall": pytest.approx(3 / 7)}
    many = train + [qa(f"answer{i}", False) for i in range(10)] + [qa("axial", False)] * 5
    assert baseline(many, test)["open"] == 0.5  # "axial" 2 of 4 times; a uniform guess among 12 answers: 1/12
    assert baseline([qa("yes", True)], test)["open"] != baseline([qa("yes", True)], test)["open"]  # NaN: nothing to copy


def test_bad_records_are_named_and_the_rest_runs(encoder, tmp_path):
    task = _toy(tmp_path, shuffle=False)
    rows = json.loads(task.train.read_text())
    rows += [{"qid": "gone", "image_name": "nowhere.png", "question": "q?", "answer": "yes", "answer_type": "CLOSED"},
             {"qid": "odd", "image_name": "train-0-0.png", "question": "q?", "answer": "purple", "answer_type": "OPEN"},
             {"qid": "half", "image_name": "img0.png"},
             {"qid": "torn", "image_name": "torn.png", "question": "q?", "answer": "yes", "answer_type": "CLOSED"}]
    (task.images / "torn.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest")
    task.train.write_text(json.dumps(rows))
    result = evaluate_vqa(encoder, task, batch_size=8)
    problems = result["problems"]
    assert result["train_questions"] == len(rows) - 4  # the set runs on without the four
    assert any("image unreadable, its questions skipped: " in p and "torn.png" in p for p in problems), problems
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
    # VQA-RAD's own unanswerable ones, all in the test set: every training answer is in the list once
    # normalised as the list was ("The liver", "Chest X-ray", "Not sure." dropped 15 of 235).
    assert len(result["problems"]) == 6 and all("testset.json" in p and "not in the answer list" in p
                                                 for p in result["problems"]), result["problems"]
    assert result["train_questions"] == 235


def test_answers_are_normalised_as_vqa_rads_answer_list_was_built():
    assert [normalised_answer(a) for a in ("The liver", "Chest X-ray", "x-ray", "Not sure.", "C-T ratio",
                                           "A bullous lesion", "Two", "2.5 cm", "1,000", "left, right")] == \
        ["liver", "chest xray", "xray", "not sure", "c t ratio", "bullous lesion", "2", "2.5 cm", "1000",
         "left right"]
