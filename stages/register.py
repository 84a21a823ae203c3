"""DVC stage: log models/clip to MLflow as a pyfunc, register a version, set its alias."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from biomedclip_factory.errors import DataError
from biomedclip_factory.evaluate.report import flat_metrics
from biomedclip_factory.io import write_json_atomic
from biomedclip_factory.params import load_section
from biomedclip_factory.registry import promote
from biomedclip_factory.registry.pyfunc import ServeLimits
from biomedclip_factory.registry.register import lineage_tags, register_model
from biomedclip_factory.tracking import stage_run

from .common import ROOT, run_stage, summary

MODEL = ROOT / "models" / "clip"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout with commits)"


def _data_hashes(dvc_lock: Path) -> dict[str, str]:
    """The md5 DVC recorded for each data/model output this version was built from."""
    if not dvc_lock.is_file():
        return {}
    stages = yaml.safe_load(dvc_lock.read_text()).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])
            if out["path"].startswith(("data/", "models/")) and "md5" in out}


def _requirements() -> list[str]:
    """The pinned runtime requirements for the logged model's environment."""
    specs = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return [s for s in specs if s]


def main() -> None:
    p = load_section("register", ROOT / "params.yaml")
    name, alias = p.get("model_name", str), p.get("alias", str)
    gate_metric, margin = p.get("gate_metric", str), p.get("margin", float)
    eval_file, train_file = ROOT / "metrics" / "eval.json", ROOT / "metrics" / "pretrain.json"
    for needed in (MODEL / "open_clip_config.json", eval_file, train_file):
        if not needed.is_file():
            raise DataError(f"register: {needed} is missing (run the earlier stages)")
    report = json.loads(eval_file.read_text())["models"]["ours"]
    pairs = pd.read_parquet(ROOT / "data" / "pairs" / "pairs.parquet", columns=["image", "license_code", "split"])
    train = pairs[pairs["split"] == "train"]
    example = ROOT / "data" / "pairs" / (train["image"].iloc[0] if len(train) else pairs["image"].iloc[0])
    dvc_lock = ROOT / "dvc.lock"
    tags = lineage_tags(
        git_commit=_git_commit(),
        dvc_lock_sha256=hashlib.sha256(dvc_lock.read_bytes()).hexdigest() if dvc_lock.is_file() else None,
        dvc_data=json.dumps(_data_hashes(dvc_lock), sort_keys=True),
        training_run_id=json.loads(train_file.read_text()).get("mlflow_run_id"),
        licence_mix=json.dumps(dict(Counter(train["license_code"].fillna("unknown"))), sort_keys=True),
        eval_metrics=json.dumps(flat_metrics(report), sort_keys=True),
    )
    with stage_run("register", ROOT, p.raw()):
        t0 = time.perf_counter()
        result = register_model(MODEL, name, alias, example, tags, _requirements(), ROOT / "src" / "biomedclip_factory",
                                ServeLimits.from_params(p))
        mlflow.log_metrics(flat_metrics(report))
        client = mlflow.MlflowClient()
        decision = promote.decide(client, name, result.version, gate_metric, margin)
        promote.apply(client, name, result.version, decision)
        mlflow.set_tags({"promoted": str(decision.promote), "promotion_reason": decision.reason})
        seconds = time.perf_counter() - t0
    write_json_atomic(ROOT / "metrics" / "register.json",
                      {"model_name": result.name, "version": int(result.version), "alias": alias,
                       "promoted": int(decision.promote), "promotion_reason": decision.reason})
    print(f"register: {result.model_uri} → models:/{name}@{alias}")
    print(f"register: {'promoted to champion' if decision.promote else 'not promoted'}: {decision.reason}")
    summary("register", 1, 1, 0, seconds, "models")


if __name__ == "__main__":
    run_stage("register", main)
