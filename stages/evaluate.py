"""DVC stage: score models/clip → metrics/eval.json (retrieval with gallery sizes, zero-shot)."""
from __future__ import annotations

import time
from pathlib import Path

import mlflow
import torch

from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.embed import Encoder
from biomedclip_factory.evaluate.retrieval import retrieval_metrics
from biomedclip_factory.evaluate.zeroshot import ZeroShotTask, evaluate_zeroshot
from biomedclip_factory.io import write_json_atomic
from biomedclip_factory.params import Section, load_section
from biomedclip_factory.shards.loader import CaptionCollator, eval_batches
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary

MODEL = ROOT / "models" / "clip"
SHARDS = ROOT / "data" / "shards"


def zeroshot_tasks(p: Section) -> list[ZeroShotTask]:
    suite = p.section("zeroshot")
    tasks = []
    for name in suite.raw():
        t = suite.section(name)
        classnames = {str(k): str(v) for k, v in t.get("classnames", dict).items()}
        templates = tuple(str(x) for x in t.get("templates", list))
        tasks.append(ZeroShotTask(name, ROOT / Path(t.get("path", str)), classnames, templates))
    return tasks


def split_retrieval(encoder: Encoder, split: str, batch_size: int) -> dict:
    collate = CaptionCollator(encoder.tokenizer, encoder.context_length)
    images, texts = [], []
    for batch_images, tokens, _ in eval_batches(SHARDS, split, encoder.preprocess, collate, batch_size):
        i, t = encoder.embed_batch(batch_images, tokens)
        images.append(i)
        texts.append(t)
    if not images:
        return {"gallery_size": 0}
    return retrieval_metrics(torch.cat(images), torch.cat(texts))


def main() -> None:
    p = load_section("evaluate", ROOT / "params.yaml")
    batch_size = p.positive("batch_size")
    splits = [str(s) for s in p.get("retrieval_splits", list)]
    tasks = zeroshot_tasks(p)
    if not (MODEL / "open_clip_config.json").is_file():
        raise DataError(f"evaluate: no model in {MODEL} (run the pretrain stage)")
    with stage_run("evaluate", ROOT, p.raw()):
        t0 = time.perf_counter()
        encoder = Encoder.load(MODEL)
        report: dict = {"retrieval": {}, "zeroshot": {}}
        scored = 0
        for split in splits:
            report["retrieval"][split] = split_retrieval(encoder, split, batch_size)
            scored += report["retrieval"][split]["gallery_size"]
        for task in tasks:
            try:
                report["zeroshot"][task.name] = evaluate_zeroshot(encoder, task, batch_size)
                scored += report["zeroshot"][task.name]["images"]
            except DataError as exc:  # one bad dataset is reported; the others still run
                report["zeroshot"][task.name] = {"error": str(exc)}
                print(f"evaluate: {exc}", flush=True)
        seconds = time.perf_counter() - t0
        write_json_atomic(ROOT / "metrics" / "eval.json", report)
        mlflow.log_metrics(flat_metrics(report))
    failed = sum(1 for r in report["zeroshot"].values() if "error" in r)
    summary("evaluate", scored, len(splits) + len(tasks) - failed, failed, seconds, "items")


def flat_metrics(report: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}".replace("@", "_at_")
        if isinstance(value, dict):
            out.update(flat_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


if __name__ == "__main__":
    run_stage("evaluate", main)
