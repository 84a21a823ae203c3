"""DVC stage: score our model (and any others named in params) → metrics/eval.json, eval.md, plots.

Retrieval on the shard splits (R@1/5/10 both ways, with gallery size and chance) and the zero-shot
suite from params. One missing model or dataset is reported by name; the rest still run.
"""
from __future__ import annotations

import time
from pathlib import Path

import mlflow
import torch

from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.embed import Encoder
from biomedclip_factory.evaluate.linear_probe import ProbeTask, evaluate_linear_probe
from biomedclip_factory.evaluate.vqa import VqaTask, evaluate_vqa
from biomedclip_factory.evaluate.models import load_encoder
from biomedclip_factory.evaluate.report import confusion_rows, examples_grid, flat_metrics, markdown_report
from biomedclip_factory.evaluate.retrieval import retrieval_metrics
from biomedclip_factory.evaluate.zeroshot import METRICS, ZeroShotTask, evaluate_zeroshot
from biomedclip_factory.io import write_bytes_atomic, write_json_atomic
from biomedclip_factory.params import Section, load_section
from biomedclip_factory.shards.loader import CaptionCollator, eval_batches
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary

OURS = "ours"
SHARDS = ROOT / "data" / "shards"
PAIR_IMAGES = ROOT / "data" / "pairs" / "images"
PLOTS = ROOT / "plots"


def zeroshot_tasks(p: Section) -> list[ZeroShotTask]:
    suite = p.section("zeroshot")
    tasks = []
    for name in suite.raw():
        t = suite.section(name)
        tasks.append(ZeroShotTask(
            name=name, path=ROOT / Path(t.get("path", str)),
            classnames={str(k): str(v) for k, v in t.get("classnames", dict).items()},
            templates=tuple(str(x) for x in t.get("templates", list)),
            metric=t.choice("metric", METRICS, "accuracy"), npz_split=t.get("npz_split", str, "test")))
    return tasks


def probe_tasks(p: Section) -> list[ProbeTask]:
    """``evaluate.linear_probe``: shared fractions and seeds, a train and a test set per dataset."""
    if "linear_probe" not in p.raw():
        return []
    probe = p.section("linear_probe")
    fractions = tuple(float(f) for f in probe.get("fractions", list))
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise DataError(f"params: 'evaluate.linear_probe.fractions' must be in (0, 1], got {list(fractions)}")
    seeds = tuple(int(s) for s in probe.get("seeds", list)) or (0,)
    sets = probe.section("sets")
    tasks = []
    for name in sets.raw():
        t = sets.section(name)
        classnames = {str(k): str(v) for k, v in t.get("classnames", dict).items()}
        metric = t.choice("metric", METRICS, "accuracy")
        splits = {role: ZeroShotTask(name=f"{name} ({role})", path=ROOT / Path(t.get(role, str)), classnames=classnames,
                                     templates=(), metric=metric, npz_split=t.get(f"{role}_split", str, role))
                  for role in ("train", "test")}
        tasks.append(ProbeTask(name, splits["train"], splits["test"], fractions, seeds))
    return tasks


def vqa_tasks(p: Section) -> list[VqaTask]:
    """``evaluate.vqa``: per dataset its images, train/test records, answer list and the head's recipe."""
    if "vqa" not in p.raw():
        return []
    suite = p.section("vqa")
    return [VqaTask(name=name, **{k: ROOT / Path(t.get(k, str)) for k in ("images", "train", "test", "answers")},
                    epochs=t.positive("epochs", int, 200), hidden=t.positive("hidden", int, 256),
                    lr=t.positive("lr", float, 1e-3), seed=t.get("seed", int, 0))
            for name in suite.raw() for t in [suite.section(name)]]


def model_entry(models: Section, name: str) -> tuple[str, str | None]:
    """``name: local-dir:<dir> | models:/<name>@<alias>``, or for a hub snapshot (the released
    BiomedCLIP) ``name: {source: local-dir:<snapshot>, text_dir: <local copy of the BERT it names>}``."""
    if isinstance(models.raw()[name], dict):
        entry = models.section(name)
        return entry.get("source", str), entry.get("text_dir", str, None)
    return models.get(name, str), None


EXAMPLES = 8  # images in the retrieval plot, each with its top text


def split_retrieval(encoder: Encoder, split: str, batch_size: int) -> tuple[dict, list[dict], torch.Tensor]:
    """Metrics, the samples' metadata and the similarity of the first ``EXAMPLES`` images to every text
    (all the retrieval plot shows; the whole matrix would not fit at PMC scale)."""
    collate = CaptionCollator(encoder.tokenizer, encoder.context_length)
    images, texts, meta = [], [], []
    for batch_images, tokens, batch_meta in eval_batches(SHARDS, split, encoder.preprocess, collate, batch_size):
        i, t = encoder.embed_batch(batch_images, tokens)
        images.append(i)
        texts.append(t)
        meta += batch_meta
    if not images:
        return {"gallery_size": 0}, [], torch.empty(0)
    image_emb, text_emb = torch.cat(images), torch.cat(texts)
    return retrieval_metrics(image_emb, text_emb), meta, image_emb[:EXAMPLES] @ text_emb.T


def evaluate_model(encoder: Encoder, splits: list[str], tasks: list[ZeroShotTask], probes: list[ProbeTask],
                   vqa: list[VqaTask], batch_size: int, keep: dict | None = None) -> dict:
    result: dict = {"retrieval": {}, "zeroshot": {}, "linear_probe": {}, "vqa": {}}
    for split in splits:
        result["retrieval"][split], meta, sim = split_retrieval(encoder, split, batch_size)
        if keep is not None:
            keep[split] = (meta, sim)
    for task in tasks:
        try:
            result["zeroshot"][task.name] = evaluate_zeroshot(encoder, task, batch_size)
        except DataError as exc:  # one bad dataset is reported; the others still run
            result["zeroshot"][task.name] = {"error": str(exc)}
            print(f"evaluate: {exc}", flush=True)
    for kind, runs in (("linear_probe", [(t.name, evaluate_linear_probe, t) for t in probes]),
                       ("vqa", [(t.name, evaluate_vqa, t) for t in vqa])):
        for name, run, task in runs:
            try:
                result[kind][name] = run(encoder, task, batch_size)
            except DataError as exc:  # one bad dataset is reported; the others still run
                result[kind][name] = {"error": str(exc)}
                print(f"evaluate: {exc}", flush=True)
    return result


def write_plots(ours: dict, kept: dict, split: str) -> None:
    for task, res in ours["zeroshot"].items():
        if "confusion" in res:
            write_bytes_atomic(PLOTS / "confusion" / f"{task}.csv", confusion_rows(res["confusion"], res["classes"]).encode())
    meta, sim = kept.get(split, ([], torch.empty(0)))
    if meta:
        top1 = sim.argmax(dim=1).tolist()
        examples = [(PAIR_IMAGES / f"{m['pair_id']}.jpg", m["caption"], meta[j]["caption"])
                    for m, j in zip(meta, top1)]
        PLOTS.mkdir(exist_ok=True)
        examples_grid(examples).save(PLOTS / "retrieval_examples.png")


def main() -> None:
    p = load_section("evaluate", ROOT / "params.yaml")
    batch_size = p.positive("batch_size")
    splits = [str(s) for s in p.get("retrieval_splits", list)]
    tasks, probes, vqa = zeroshot_tasks(p), probe_tasks(p), vqa_tasks(p)
    others = {str(k): model_entry(p.section("models"), str(k)) for k in p.get("models", dict, {})}
    if OURS in others:
        raise DataError(f"params: 'evaluate.models' must not redefine '{OURS}' (our trained model)")
    models = {OURS: ("local-dir:models/clip", None), **others}
    with stage_run("evaluate", ROOT, p.raw()):
        t0 = time.perf_counter()
        report: dict = {}
        kept: dict = {}
        for name, (spec, text_dir) in models.items():
            try:
                encoder = load_encoder(spec, ROOT, text_dir)
            except DataError as exc:
                if name == OURS:
                    raise
                report[name] = {"error": str(exc), "source": spec}
                print(f"evaluate: {exc}", flush=True)
                continue
            report[name] = {"source": spec, **evaluate_model(encoder, splits, tasks, probes, vqa, batch_size,
                                                             kept if name == OURS else None)}
        seconds = time.perf_counter() - t0
        write_json_atomic(ROOT / "metrics" / "eval.json", {"models": report})
        write_bytes_atomic(ROOT / "metrics" / "eval.md", markdown_report(report).encode())
        write_plots(report[OURS], kept, splits[0] if splits else "test")
        for name, result in report.items():
            mlflow.log_metrics(flat_metrics(result, f"{name}."))
        mlflow.log_artifact(str(ROOT / "metrics" / "eval.md"))
    scored = sum(r["retrieval"][s]["gallery_size"] for r in report.values() if "retrieval" in r for s in splits)
    scored += sum(z.get("images", 0) for r in report.values() for z in r.get("zeroshot", {}).values())
    failed = sum(1 for r in report.values() if "error" in r) + \
        sum(1 for r in report.values() for z in r.get("zeroshot", {}).values() if "error" in z)
    summary("evaluate", scored, len(report), failed, seconds, "items")


if __name__ == "__main__":
    run_stage("evaluate", main)
