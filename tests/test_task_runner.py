"""Per-article work through Prefect's Dask task runner: a real local Dask cluster of 2 workers."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.io import read_jsonl
from biomedclip_factory.params import Section
from stages.task_runner import mapper_from_params

from .conftest import make_project, run_module


@pytest.mark.slow
def test_scrape_and_align_on_a_two_worker_dask_cluster_match_threads(tmp_path):
    dask = {"scrape": {"runner": "dask", "workers": 2}, "align": {"runner": "dask", "workers": 2}}
    projects = {"threads": make_project(tmp_path / "threads", {}), "dask": make_project(tmp_path / "dask", dask)}
    for name, project in projects.items():
        for stage in ("stages.scrape", "stages.align"):
            proc = run_module(project, stage)
            log = proc.stdout + proc.stderr  # the Dask scheduler and the Prefect flow run announce themselves
            ran_on_dask = "distributed.scheduler" in log and "Finished in state Completed()" in log
            assert ran_on_dask == (name == "dask"), log[-2000:]
    threads, dask_run = (projects[n] for n in ("threads", "dask"))
    assert read_jsonl(dask_run / "data/raw/manifest.jsonl") == read_jsonl(threads / "data/raw/manifest.jsonl")
    for f in (p for p in (threads / "data/raw").rglob("*") if p.is_file()):
        assert f.read_bytes() == (dask_run / "data/raw" / f.relative_to(threads / "data/raw")).read_bytes(), f
    a, b = (pd.read_parquet(p / "data/pairs/pairs.parquet") for p in (threads, dask_run))
    assert len(a) == 10 and a.drop(columns="mentions").equals(b.drop(columns="mentions"))
    assert list(map(list, a["mentions"])) == list(map(list, b["mentions"]))
    metrics = json.loads((dask_run / "metrics/align.json").read_text())
    assert metrics["pairs"] == 10 and metrics["figures"] == 98


def test_a_bad_runner_is_a_params_error():
    with pytest.raises(ParamsError, match="'scrape.runner' must be threads, dask or a Dask scheduler address"):
        mapper_from_params(Section({"runner": "spark", "workers": 2}, "scrape"), "scrape")
    mapper = mapper_from_params(Section({"runner": "threads", "workers": 3}, "align"), "align")
    assert list(mapper(lambda x: x * 2, [1, 2, 3])) == [2, 4, 6]
