"""DVC stage: score our model (and any others named in params) → metrics/eval.json, eval.md, plots.

params → ``Suite`` (retrieval on the shard splits, zero-shot, linear probe, VQA) → each model scored
→ the report, plots and MLflow. One missing model or dataset is reported by name; the rest still run.
"""
from __future__ import annotations

import json
import time
from argparse import Namespace

import mlflow

from biomedclip_factory.evaluate.conditions import stamp
from biomedclip_factory.evaluate.report import flat_metrics, markdown_report, write_plots
from biomedclip_factory.evaluate.suite import evaluate_models, failures, items_scored
from biomedclip_factory.evaluate.tasks import OURS, Suite, models_from_params
from biomedclip_factory.io import write_bytes_atomic, write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.tracking import stage_run

from .common import ROOT, relative_to_project, run_stage, summary


def main(a: Namespace) -> None:
    p = load_section("evaluate", ROOT / "params.yaml")
    suite, models = Suite.from_params(p, ROOT), models_from_params(p, f"local-dir:{relative_to_project(a.model)}")
    with stage_run("evaluate", ROOT, p.raw()):
        t0 = time.perf_counter()
        kept: dict = {}
        report = evaluate_models(models, suite, ROOT, a.shards, kept)
        stamp(report, suite, json.loads(a.inputs.read_text()) if a.inputs.is_file() else {})
        seconds = time.perf_counter() - t0
        write_json_atomic(a.metrics, {"models": report})
        write_bytes_atomic(a.report, markdown_report(report).encode())
        write_plots(report[OURS], kept, suite.splits[0] if suite.splits else "test", a.confusion, a.examples,
                    a.pairs)
        for name, result in report.items():
            mlflow.log_metrics(flat_metrics(result, f"{name}."))
        mlflow.log_artifact(str(a.report))
    summary("evaluate", items_scored(report, suite.splits), len(report), failures(report), seconds, "items")


if __name__ == "__main__":
    run_stage("evaluate", main, ("model", "shards", "pairs", "inputs", "metrics", "report", "confusion", "examples"))
