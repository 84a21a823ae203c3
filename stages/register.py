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
from biomedclip_factory.errors import DataError, ParamsError
from biomedclip_factory.evaluate.conditions import measured_tag
from biomedclip_factory.evaluate.models import load_encoder
from biomedclip_factory.evaluate.report import flat_metrics
from biomedclip_factory.evaluate.suite import SCORERS, split_retrieval
from biomedclip_factory.evaluate.tasks import Suite
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


def champion_rescorer(a: Namespace, name: str, metric: str, suite: Suite) -> Callable[[str], float | None]:
    """Scores a registered version on the gate metric's retrieval split or set as evaluate scored ours
    (the same device, ``evaluate.precision``, ``evaluate.batch_size`` and set settings; decoding workers
    change nothing), for a gate between scores measured alike."""
    def rescore(version: str) -> float | None:
        kind, task_name = metric.split(".")[:2]
        print(f"register: scoring champion v{version} on this run's {kind} '{task_name}'", flush=True)
        encoder = replace(load_encoder(f"models:/{name}/{version}", ROOT), workers=min(8, os.cpu_count() or 1),
                          precision=suite.precision)
        if kind == "retrieval":
            result, _, _ = split_retrieval(encoder, a.shards, task_name, suite.batch_size)
        else:
            task = next((t for k, t in suite.tasks() if k == kind and t.name == task_name), None)
            if task is None:  # the candidate has the metric, so params name the set: only a typo gets here
                raise ParamsError(f"register: gate metric '{metric}' names no {kind} set of evaluate's params")
            result = SCORERS[kind](encoder, task, suite.batch_size)
        return flat_metrics({kind: {task_name: result}}).get(metric)
    return rescore


def main(a: Namespace) -> None:
    p = load_section("register", ROOT / "params.yaml")
    name, alias = p.get("model_name", str), promote.new_version_alias(p)
    gate_metric, margin = p.get("gate_metric", str), p.get("margin", float)
    suite = Suite.from_params(load_section("evaluate", ROOT / "params.yaml"), ROOT)  # a champion is scored as ours was
    for needed in (a.model / "open_clip_config.json", a.eval, a.pretrain):
        if not needed.is_file():
            raise DataError(f"register: {needed} is missing (run the earlier stages)")
    report = json.loads(a.eval.read_text())["models"]["ours"]
    pairs = pd.read_parquet(a.pairs / TABLE_NAME, columns=["image", "split"])
    example = a.pairs / next(iter(pairs.loc[pairs["split"] == "train", "image"]), pairs["image"].iloc[0])
    tags = lineage_tags(ROOT, json.loads(a.pretrain.read_text()).get("mlflow_run_id"),
                        train_licence_mix(a.pairs / TABLE_NAME), flat_metrics(report), split_digests(a.shards),
                        measured_tag(report))
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
                                champion_rescorer(a, name, gate_metric, suite))
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
