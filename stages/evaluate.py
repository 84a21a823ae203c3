"""DVC stage: score our model (and any others named in params) → metrics/eval.json, eval.md, plots.

params → ``Suite`` (retrieval on the shard splits, zero-shot, linear probe, VQA) → each model scored
→ the report, plots and MLflow. One missing model or dataset is reported by name; the rest still run.
"""
from __future__ import annotations

import time

import mlflow
import torch

from biomedclip_factory.corpus.records import image_path
from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.models import load_encoder
from biomedclip_factory.evaluate.report import confusion_rows, examples_grid, flat_metrics, markdown_report
from biomedclip_factory.evaluate.suite import OURS, Suite, evaluate_model, items_scored, models_from_params
from biomedclip_factory.io import write_bytes_atomic, write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary

SHARDS = ROOT / "data" / "shards"
PAIRS = ROOT / "data" / "pairs"
PLOTS = ROOT / "plots"


def write_plots(ours: dict, kept: dict, split: str) -> None:
    for task, res in ours["zeroshot"].items():
        if "confusion" in res:
            write_bytes_atomic(PLOTS / "confusion" / f"{task}.csv", confusion_rows(res["confusion"], res["classes"]).encode())
    meta, sim = kept.get(split, ([], torch.empty(0)))
    if meta:
        top1 = sim.argmax(dim=1).tolist()
        examples = [(PAIRS / image_path(m["pair_id"]), m["caption"], meta[j]["caption"])
                    for m, j in zip(meta, top1)]
        PLOTS.mkdir(exist_ok=True)
        examples_grid(examples).save(PLOTS / "retrieval_examples.png")


def main() -> None:
    p = load_section("evaluate", ROOT / "params.yaml")
    suite, models = Suite.from_params(p, ROOT), models_from_params(p, "local-dir:models/clip")
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
            report[name] = {"source": spec, **evaluate_model(encoder, suite, SHARDS, kept if name == OURS else None)}
        seconds = time.perf_counter() - t0
        write_json_atomic(ROOT / "metrics" / "eval.json", {"models": report})
        write_bytes_atomic(ROOT / "metrics" / "eval.md", markdown_report(report).encode())
        write_plots(report[OURS], kept, suite.splits[0] if suite.splits else "test")
        for name, result in report.items():
            mlflow.log_metrics(flat_metrics(result, f"{name}."))
        mlflow.log_artifact(str(ROOT / "metrics" / "eval.md"))
    failed = sum(1 for r in report.values() if "error" in r) + sum(
        1 for r in report.values() for kind in ("zeroshot", "linear_probe", "vqa")
        for z in r.get(kind, {}).values() if "error" in z)
    summary("evaluate", items_scored(report, suite.splits), len(report), failed, seconds, "items")


if __name__ == "__main__":
    run_stage("evaluate", main)
