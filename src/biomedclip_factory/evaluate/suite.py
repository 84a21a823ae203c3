"""The scoring of each model on the suite (``tasks.py``: what params ask for).

A suite is retrieval on the shard splits, the zero-shot sets, the linear-probe sets and the VQA sets,
all from ``evaluate:`` in params, so a dataset is added without code. One bad dataset is reported by
name in the result; the others still run.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..errors import DataError
from ..shards.loader import CaptionCollator, eval_batches, split_size
from .embed import Encoder
from .linear_probe import evaluate_linear_probe
from .models import load_encoder
from .retrieval import retrieval_metrics
from .tasks import OURS, PRECISION_BITS, Suite
from .vqa import evaluate_vqa
from .zeroshot import evaluate_zeroshot


EXAMPLES = 8  # images in the retrieval plot, each with its top text
SCORERS = {"zeroshot": evaluate_zeroshot, "linear_probe": evaluate_linear_probe, "vqa": evaluate_vqa}  # by kind


def split_retrieval(encoder: Encoder, shards: Path, split: str, batch_size: int) -> tuple[dict, list[dict], torch.Tensor]:
    """Metrics, the samples' metadata and the similarity of the first ``EXAMPLES`` images to every text
    (all the retrieval plot shows; the whole matrix would not fit at PMC scale)."""
    collate = CaptionCollator(encoder.tokenizer, encoder.context_length)
    images, texts, meta, read_as = [], [], [], []
    pad = encoder.tokenizer.pad_token_id
    for batch_images, tokens, batch_meta in eval_batches(shards, split, encoder.preprocess, collate, batch_size,
                                                         num_workers=encoder.workers):
        i, t = encoder.embed_batch(batch_images, tokens)
        images.append(i)
        texts.append(t)
        meta += batch_meta
        read_as += [tuple(row[row != pad].tolist()) for row in tokens]  # each caption as the text tower reads it
    # Decoding workers skip an unreadable sample where the parent cannot count it: the split's own
    # size (sizes.json) says how many the gallery lost.
    unreadable = split_size(shards, split) - len(meta)
    if unreadable:
        print(f"evaluate: split '{split}': {unreadable} of {len(meta) + unreadable} samples unreadable, "
              "left out of the gallery", flush=True)
    if not images:
        if unreadable:  # every sample skipped: a broken split, or shards another layout wrote; never a score
            raise DataError(f"evaluate: split '{split}' in {shards}: none of its {unreadable} samples could be "
                            "read (the lines above say why)")
        return {"gallery_size": 0, "unreadable": 0}, [], torch.empty(0)
    image_emb, text_emb = torch.cat(images), torch.cat(texts)
    metrics = retrieval_metrics(image_emb, text_emb, captions=read_as)
    # how the towers ran, beside the ranking rule: the gate compares scores measured alike only
    measured = {"unreadable": unreadable, "precision_bits": PRECISION_BITS[encoder.precision]}
    return {**metrics, **measured}, meta, image_emb[:EXAMPLES] @ text_emb.T


def evaluate_model(encoder: Encoder, suite: Suite, shards: Path, keep: dict | None = None) -> dict:
    """Every task of ``suite`` for one model; with ``keep``, each split's metadata and example scores."""
    result: dict = {"retrieval": {}, "zeroshot": {}, "linear_probe": {}, "vqa": {}}
    for split in suite.splits:
        result["retrieval"][split], meta, sim = split_retrieval(encoder, shards, split, suite.batch_size)
        if keep is not None:
            keep[split] = (meta, sim)
    for kind, task in suite.tasks():
        try:
            result[kind][task.name] = SCORERS[kind](encoder, task, suite.batch_size)
        except DataError as exc:  # one bad dataset is reported; the others still run
            result[kind][task.name] = {"error": str(exc)}
            print(f"evaluate: {exc}", flush=True)
    return result


def evaluate_models(models: dict[str, tuple[str, str | None]], suite: Suite, root: Path, shards: Path,
                    keep: dict) -> dict:
    """The report of every model in ``models``; one that cannot be loaded is reported by name and the
    rest still run, except ours (``OURS``), whose absence is the stage's error. ``keep`` gets our
    retrieval examples."""
    report: dict = {}
    for name, (spec, text_dir) in models.items():
        try:
            encoder = replace(load_encoder(spec, root, text_dir), workers=suite.workers, precision=suite.precision)
        except DataError as exc:
            if name == OURS:
                raise
            report[name] = {"error": str(exc), "source": spec}
            print(f"evaluate: {exc}", flush=True)
            continue
        try:
            report[name] = {"source": spec, **evaluate_model(encoder, suite, shards, keep if name == OURS else None)}
        except DataError as exc:  # a split none of whose samples it could read
            if name == OURS:
                raise
            report[name] = {"error": str(exc), "source": spec}
            print(f"evaluate: {exc}", flush=True)
    return report


def failures(report: dict) -> int:
    """Models that could not be loaded plus datasets that could not be scored."""
    return sum(1 for r in report.values() if "error" in r) + sum(
        1 for r in report.values() for kind in ("zeroshot", "linear_probe", "vqa")
        for task in r.get(kind, {}).values() if "error" in task)


def items_scored(report: dict, splits: list[str]) -> int:
    """Retrieval pairs, zero-shot images, probe test images and VQA questions, over every model."""
    scored = sum(r["retrieval"][s]["gallery_size"] for r in report.values() if "retrieval" in r for s in splits)
    for result in report.values():
        scored += sum(z.get("images", 0) for z in result.get("zeroshot", {}).values())
        scored += sum(z.get("test_images", 0) for z in result.get("linear_probe", {}).values())
        scored += sum(z.get("test_questions", 0) for z in result.get("vqa", {}).values())
    return scored
