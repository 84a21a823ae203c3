"""Where a registered model came from, as MLflow version tags: code, data, training run, licences, scores.

A user who pulls ``champion`` must be able to rebuild it: the git commit and ``dvc.lock`` name the code
and every data/model output it was built from (the register run keeps the ``dvc.lock`` and
``params.yaml`` it saw as artifacts, since a scheduled run commits neither); the licence mix says what
its training pairs allow.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.utils.validation import MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH

from .promote import MEASURED_AS, SHARD_DIGESTS


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD") or "unknown (not a git checkout with commits)"


def git_dirty(root: Path) -> str | None:
    """Whether tracked files differ from the commit: a scheduled run rewrites dvc.lock and commits
    nothing, so the commit alone does not name what was built (the run's artifacts do)."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else str(bool(status)).lower()


def dvc_output_hashes(dvc_lock: Path) -> dict[str, str]:
    """The md5 DVC recorded for each data/model output this version was built from."""
    if not dvc_lock.is_file():
        return {}
    stages = yaml.safe_load(dvc_lock.read_text()).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])
            if out["path"].startswith(("data/", "models/")) and "md5" in out}


# What loading and serving the model imports (registry/pyfunc.py and the modules it reaches), not
# the training stack: `mlflow models serve` and `build-docker` install this list, and DeepSpeed,
# Prefect or DVC there would only slow them down or fail to build (DeepSpeed's setup needs torch).
SERVING_DISTRIBUTIONS = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers",
                         "safetensors", "pillow", "numpy", "pandas", "PyYAML", "ftfy", "mlflow")


def serving_requirements(constraints: Path) -> list[str]:
    """The serving distributions pinned at the versions the project resolved (``constraints.txt``)."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in constraints.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if "==" in spec:
            pins[canonicalize_name(spec.split("==")[0].split("[")[0])] = spec
    missing = [d for d in SERVING_DISTRIBUTIONS if canonicalize_name(d) not in pins]
    if missing:
        raise ValueError(f"register: {constraints} pins no version of {', '.join(missing)}")
    return [pins[canonicalize_name(d)] for d in SERVING_DISTRIBUTIONS]


def train_licence_mix(pairs_table: Path) -> dict[str, int]:
    pairs = pd.read_parquet(pairs_table, columns=["license_code", "split"])
    return dict(Counter(pairs.loc[pairs["split"] == "train", "license_code"].fillna("unknown")))


def lineage_tags(root: Path, training_run_id: str | None, licence_mix: dict[str, int],
                 eval_metrics: dict[str, Any], splits: dict[str, str] | None = None,
                 measured_as: dict[str, str] | None = None) -> dict[str, str]:
    """The version tags of a model built in the project at ``root``: flat strings, whole or not at all.

    A cut JSON value would not parse: the promotion gate reads ``eval_metrics`` (~5 kB at the paper's
    evaluation suite), so a value over MLflow's registry limit is an error naming the tag."""
    dvc_lock = root / "dvc.lock"
    values = {"git_commit": git_commit(root), "git_dirty": git_dirty(root),
              "dvc_lock_sha256": hashlib.sha256(dvc_lock.read_bytes()).hexdigest() if dvc_lock.is_file() else None,
              "dvc_data": json.dumps(dvc_output_hashes(dvc_lock), sort_keys=True),
              "training_run_id": training_run_id,
              "licence_mix": json.dumps(licence_mix, sort_keys=True),
              "eval_metrics": json.dumps(eval_metrics, sort_keys=True),
              SHARD_DIGESTS: json.dumps(splits, sort_keys=True) if splits else None,
              MEASURED_AS: json.dumps(measured_as, sort_keys=True) if measured_as else None}
    tags = {k: str(v) for k, v in values.items() if v is not None}
    for key, value in tags.items():
        if len(value) > MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH:
            raise ValueError(f"register: the '{key}' tag is {len(value):,} characters; "
                             f"MLflow's registry keeps {MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH:,}")
    return tags
