"""Per-article work through Prefect's Dask task runner: a real local Dask cluster of 2 workers."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import yaml

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.io import read_jsonl
from biomedclip_factory.params import Section
from biomedclip_factory.task_runner import dask_map, mapper_from_params

from .conftest import make_project, run_stage


@pytest.mark.slow
def test_scrape_and_align_on_a_dask_cluster_and_on_processes_match_threads(built_project, tmp_path, monkeypatch):
    """The same scrape and align as the default threads runner's (the built project's, by `dvc repro`)."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no Prefect server, whatever runs the tests has
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    runners = {name: {"scrape": {"runner": name, "workers": 2}, "align": {"runner": name, "workers": 2}}
               for name in ("dask", "processes")}
    projects = {name: make_project(tmp_path / name, overrides) for name, overrides in runners.items()}
    for name, project in projects.items():
        for stage in ("scrape", "align"):
            proc = run_stage(project, stage)
            log = proc.stdout + proc.stderr  # the Dask scheduler and the Prefect flow run announce themselves
            ran_on_dask = "distributed.scheduler" in log and "Finished in state Completed()" in log
            assert ran_on_dask == (name == "dask"), log[-2000:]
            # without a Prefect server: one temporary server, the flow's, that the workers report to as well
            assert log.count("Starting temporary server") == (name == "dask"), log[-2000:]
    threads = built_project
    assert yaml.safe_load((threads / "params.yaml").read_text())["align"]["runner"] == "threads"
    for other in projects.values():
        assert read_jsonl(other / "data/raw/manifest.jsonl") == read_jsonl(threads / "data/raw/manifest.jsonl")
        for f in (p for p in (threads / "data/raw").rglob("*") if p.is_file()):
            assert f.read_bytes() == (other / "data/raw" / f.relative_to(threads / "data/raw")).read_bytes(), f
        a, b = (pd.read_parquet(p / "data/pairs/pairs.parquet") for p in (threads, other))
        assert len(a) == 10 and a.drop(columns="mentions").equals(b.drop(columns="mentions"))
        assert list(map(list, a["mentions"])) == list(map(list, b["mentions"]))
        for image in (threads / "data/pairs/images").iterdir():
            assert image.read_bytes() == (other / "data/pairs/images" / image.name).read_bytes()
        metrics = json.loads((other / "metrics/align.json").read_text())
        assert metrics["pairs"] == 10 and metrics["figures"] == 98


def test_a_temporary_prefect_server_gets_minutes_to_start_in_the_project(monkeypatch):
    """Every stage and flow runs in the project's root, whose settings give a temporary Prefect server (a Dask
    stage's without PREFECT_API_URL) 2 minutes to answer: Prefect's 20 s failed a Dask stage on a busy machine."""
    from prefect.settings import Settings

    from .conftest import REPO

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.chdir(REPO)
    assert Settings().server.ephemeral.startup_timeout_seconds == 120


def _threads_in_worker(_: int) -> tuple[str | None, int]:
    import os

    import torch
    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()


def test_process_mapper_keeps_order_and_runs_one_numeric_thread_per_worker():
    mapper = mapper_from_params(Section({"runner": "processes", "workers": 2}, "align"), "align")
    assert list(mapper(abs, [-3, 1, -2, 0, -5])) == [3, 1, 2, 0, 5]
    assert set(mapper(_threads_in_worker, range(4))) == {("1", 1)}


def _mark(folder: Path, item: int) -> int:
    (folder / str(item)).touch()
    return item * 10


@pytest.mark.slow
def test_dask_mapper_yields_each_batch_as_it_finishes_in_order(prefect_api, tmp_path):
    """A killed multi-hour Dask run keeps what finished: results arrive per batch, not at the end; each
    Prefect task run holds a chunk of items, not one (the server's bookkeeping per task run). The map
    leaves this process's environment as it found it: Dask's nannies set OMP_NUM_THREADS=1 in it, and
    every stage or trainer started after the map would have run on one thread."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    environment = dict(os.environ)
    results = dask_map("batches", None, 2, batch=3, chunk=2)(partial(_mark, tmp_path), list(range(8)))
    first = [next(results) for _ in range(3)]
    assert first == [0, 10, 20] and sorted(int(p.name) for p in tmp_path.iterdir()) == [0, 1, 2]
    assert list(results) == [30, 40, 50, 60, 70]
    assert dict(os.environ) == environment
    assert len(list(tmp_path.iterdir())) == 8
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="batches-articles")))
    assert len(runs) == 5  # batches of 3, 3, 2 items in chunks of 2: 2 + 2 + 1 task runs


def test_a_bad_runner_is_a_params_error():
    with pytest.raises(ParamsError, match="'scrape.runner' must be threads, processes, dask or a Dask scheduler"):
        mapper_from_params(Section({"runner": "spark", "workers": 2}, "scrape"), "scrape")
    mapper = mapper_from_params(Section({"runner": "threads", "workers": 3}, "align"), "align")
    assert list(mapper(lambda x: x * 2, [1, 2, 3])) == [2, 4, 6]
