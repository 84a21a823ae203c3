"""DVC stage: a record of each input that params name, and of the library versions each stage's output
holds → one JSON per stage (run every time).

dvc.yaml can list fixed paths only, so a starting model, tokenizer or evaluation set named in params
was read without DVC seeing it: re-copying ``models/clip-224`` did not rerun the 384-px phase. This
stage runs on every ``dvc repro`` (``always_changed``), digests what params name (a stat cache keeps
that to seconds once a dataset is hashed) and writes one record per consuming stage, which is that
stage's dep: a changed input reruns it; an unchanged one leaves the record, and the stage, as it was.
A missing start or tokenizer dir, or a named path that is a pipeline output, fails it before any
other stage starts; a missing evaluation set is recorded, for evaluate to report by name; a local scrape
source that is not on this machine (a clone that pulled the data) keeps its last record. Each record
also holds the installed versions of the libraries that stage's output depends on (see
``library_versions``): upgrading Pillow reruns align, upgrading DeepSpeed reruns pretrain.
"""
from __future__ import annotations

import json
import os
import time
from argparse import Namespace
from pathlib import Path

import yaml

from biomedclip_factory.digest import DigestCache
from biomedclip_factory.io import write_json_atomic
from biomedclip_factory.library_versions import RESULT_LIBRARIES, installed_versions
from biomedclip_factory.named_inputs import check_named_paths, kept_when_absent, named_inputs, record
from biomedclip_factory.tracking import tracking_uri

from .common import ROOT, run_stage, summary


def pipeline_outputs() -> list[Path]:
    """Every output dvc.yaml declares, as paths."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [ROOT / (entry if isinstance(entry, str) else next(iter(entry)))
            for spec in stages.values() for kind in ("outs", "metrics", "plots") for entry in spec.get(kind, [])]


def main(a: Namespace) -> None:
    t0 = time.perf_counter()
    # A registry that does not answer must not hold every run for MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    named = named_inputs(ROOT / "params.yaml", ROOT)
    check_named_paths(named, pipeline_outputs())
    cache, unresolved = DigestCache(a.digest_cache), 0
    for stage in RESULT_LIBRARIES:
        records, libraries = record(named.get(stage, {}), cache, tracking_uri(ROOT)), installed_versions(stage)
        if stage == "scrape":
            previous = getattr(a, stage)
            last = json.loads(previous.read_text()) if previous.is_file() else {}
            kept = kept_when_absent(records, last)
            if kept != records and "libraries" in last:  # a source not on this machine: its whole last record stands
                libraries = last["libraries"]
            records = kept
        for key, entry in records.items():
            if entry.get("missing") or entry.get("version", "") is None:
                unresolved += 1
                print(f"inputs: {key}: {entry['ref']} is not there now; {stage} will report it", flush=True)
        write_json_atomic(getattr(a, stage), {**records, "libraries": libraries})
    cache.save()
    seconds = time.perf_counter() - t0
    summary("inputs", sum(map(len, named.values())), len(RESULT_LIBRARIES), unresolved, seconds, "inputs")
    print(f"inputs: {cache.hashed_bytes / 1e6:.1f} MB hashed ({cache.hashed_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s),"
          " the rest unchanged since the last run", flush=True)


if __name__ == "__main__":
    run_stage("inputs", main, (*RESULT_LIBRARIES, "digest_cache"))
