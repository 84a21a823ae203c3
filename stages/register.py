"""DVC stage: log models/clip to MLflow as a pyfunc, register a version, set its alias."""
from __future__ import annotations

import json
import os
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import replace

import mlflow
import pandas as pd

from biomedclip_factory.corpus.table import TABLE_NAME
from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.models import load_encoder
from biomedclip_factory.evaluate.report import flat_metrics
from biomedclip_factory.evaluate.suite import split_retrieval
from biomedclip_factory.evaluate.tasks import PRECISIONS
from biomedclip_factory.io import write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.registry import promote
from biomedclip_factory.registry.lineage import lineage_tags, serving_requirements, train_licence_mix
from biomedclip_factory.registry.pyfunc import ServeLimits
from biomedclip_factory.registry.register import register_model
from biomedclip_factory.shards.loader import split_digests
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary

LINEAGE_RUN = "lineage_run_id"  # version tag: the register run whose artifacts hold its dvc.lock and params.yaml


def champion_rescorer(a: Namespace, name: str, metric: str, batch_size: int,
                      precision: str) -> Callable[[str], float | None]:
    """Scores a registered version on this run's retrieval split as evaluate scored ours (the same
    device, ``evaluate.precision`` and ``evaluate.batch_size``; decoding workers change nothing), for a
    gate on the same gallery."""
    def rescore(version: str) -> float | None:
        split = metric.split(".")[1]
        print(f"register: scoring champion v{version} on this run's '{split}' split", flush=True)
        encoder = replace(load_encoder(f"models:/{name}/{version}", ROOT), workers=min(8, os.cpu_count() or 1),
                          precision=precision)
        result, _, _ = split_retrieval(encoder, a.shards, split, batch_size)
        return flat_metrics({"retrieval": {split: result}}).get(metric)
    return rescore


def main(a: Namespace) -> None:
    p = load_section("register", ROOT / "params.yaml")
    name, alias = p.get("model_name", str), promote.new_version_alias(p)
    gate_metric, margin = p.get("gate_metric", str), p.get("margin", float)
    evaluated = load_section("evaluate", ROOT / "params.yaml")  # a champion is scored again as ours was
    batch_size, precision = evaluated.positive("batch_size"), evaluated.choice("precision", PRECISIONS, "fp32")
    for needed in (a.model / "open_clip_config.json", a.eval, a.pretrain):
        if not needed.is_file():
            raise DataError(f"register: {needed} is missing (run the earlier stages)")
    report = json.loads(a.eval.read_text())["models"]["ours"]
    pairs = pd.read_parquet(a.pairs / TABLE_NAME, columns=["image", "split"])
    example = a.pairs / next(iter(pairs.loc[pairs["split"] == "train", "image"]), pairs["image"].iloc[0])
    tags = lineage_tags(ROOT, json.loads(a.pretrain.read_text()).get("mlflow_run_id"),
                        train_licence_mix(a.pairs / TABLE_NAME), flat_metrics(report), split_digests(a.shards))
    with stage_run("register", ROOT, p.raw()):
        t0 = time.perf_counter()
        limits = ServeLimits.from_params(p)
        result = register_model(a.model, name, alias, example, tags, serving_requirements(a.constraints), a.code,
                                limits)
        mlflow.log_metrics(flat_metrics(report))
        for built_from in (ROOT / "dvc.lock", ROOT / "params.yaml"):  # what a scheduled run never commits
            if built_from.is_file():
                mlflow.log_artifact(str(built_from), "lineage")
        client = mlflow.MlflowClient()
        # The run holding them: a reused version's own run may have died before it logged them.
        client.set_model_version_tag(name, result.version, LINEAGE_RUN, mlflow.active_run().info.run_id)
        decision = promote.gate(client, name, result.version, gate_metric, margin,
                                champion_rescorer(a, name, gate_metric, batch_size, precision))
        mlflow.set_tags({"registered_version": result.version, "reused_version": str(result.reused),
                         "promoted": str(decision.promote), "promotion_reason": decision.reason})
        seconds = time.perf_counter() - t0
    write_json_atomic(a.metrics,
                      {"model_name": result.name, "version": int(result.version), "alias": alias,
                       "promoted": int(decision.promote), "promotion_reason": decision.reason,
                       "blocked": int(decision.blocked)})
    print(f"register: {result.model_uri} → models:/{name}@{alias}")
    print(f"register: {'promoted to champion' if decision.promote else 'not promoted'}: {decision.reason}")
    if decision.blocked:
        print("register: WARNING: no new version can be promoted until the champion is repaired", flush=True)
    summary("register", 1, 1, 0, seconds, "models")


if __name__ == "__main__":
    run_stage("register", main, ("model", "pairs", "shards", "eval", "pretrain", "constraints", "code", "metrics"))
