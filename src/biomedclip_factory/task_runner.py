"""Where a stage's per-article work runs, from ``<stage>.runner`` in params.yaml.

- ``threads`` (default): a thread pool in the stage's process, ``<stage>.workers`` wide.
- ``processes``: ``workers`` processes on this machine, past the GIL that align's XML and caption
  work holds, for many cores; ~2 s to start, no Prefect task per article.
- ``dask``: a Prefect flow whose tasks run on a local Dask cluster of ``workers`` processes.
- ``tcp://host:8786`` (any Dask scheduler address): the same flow on an existing Dask cluster;
  its workers must see this project's folders at the same paths (a shared filesystem).

Both Dask forms go through Prefect's ``DaskTaskRunner``: every ``DASK_CHUNK`` articles are one
Prefect task run (visible in the Prefect UI when ``PREFECT_API_URL`` points at a server),
``DASK_BATCH`` articles one flow run on one cluster.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .errors import ParamsError
from .parallel import Mapper, process_map, thread_map
from .params import Section


def _call_each(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(item) for item in chunk]


# Items per Prefect flow run on Dask: results (and align's journal entries) arrive batch by batch,
# so a run killed after hours keeps what finished, at ~1 s of flow-run overhead per batch.
DASK_BATCH = 2000
# Items per Prefect task run. Every task run is several API calls and database rows on the Prefect
# server (benchmarks/prefect_tasks.py); one per article would bound a PMC-scale run by the server's
# bookkeeping. The per-article code never raises for bad input, so a task fails only when its
# worker does, and results arrive per batch either way: a chunk costs no retry granularity.
DASK_CHUNK = 50


@contextmanager
def _scheduler(address: str | None, workers: int) -> Iterator[str]:
    """``address``, or a local Dask cluster of ``workers`` one-thread processes for the whole map."""
    if address:
        yield address
        return
    from distributed import LocalCluster

    with _environ_kept(), _one_prefect_api(), LocalCluster(n_workers=workers, threads_per_worker=1,
                                                           processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@contextmanager
def _environ_kept() -> Iterator[None]:
    """Dask's nannies run in this process and set their workers' ``pre-spawn-environ`` (OMP_NUM_THREADS=1
    and its kin) in *our* environment, never undone: every process started after the map (a stage, a
    trainer) would run one numeric thread and reach other floating-point sums. Put it back as it was."""
    before = dict(os.environ)
    try:
        yield
    finally:  # only what changed: Prefect's and Dask's threads may still be reading the environment
        for name in set(os.environ) - set(before):
            os.environ.pop(name, None)
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


@contextmanager
def _one_prefect_api() -> Iterator[None]:
    """Without ``PREFECT_API_URL`` the flow starts a temporary Prefect server, and so would every local Dask
    worker for its own task runs: workers + 1 servers over one SQLite file, each ~3 s to start, the task runs
    split between them. Start the flow's server first and give its address to the workers' environment."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():  # a server, or Prefect's own error
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance the flow's client then finds already running
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url  # until _environ_kept puts the environment back
    yield


def dask_map(flow_name: str, address: str | None, workers: int, batch: int = DASK_BATCH,
             chunk: int = DASK_CHUNK) -> Mapper:
    """A mapper running items as Prefect tasks on Dask (a local cluster when ``address`` is None),
    ``chunk`` items per task run and ``batch`` per flow run, yielding each batch's results as soon as
    it is done."""

    def mapper(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from prefect import flow, task, unmapped
        from prefect.cache_policies import NO_CACHE
        from prefect_dask import DaskTaskRunner

        # No caching: a rerun must look at the source again (the per-article code skips what is done).
        articles = task(_call_each, name=f"{flow_name}-articles", cache_policy=NO_CACHE, persist_result=False)
        with _scheduler(address, workers) as scheduler:

            @flow(name=flow_name, task_runner=DaskTaskRunner(address=scheduler), persist_result=False,
                  log_prints=False)
            def run(chunks: list[list[Any]]) -> list[list[Any]]:
                return [future.result() for future in articles.map(unmapped(fn), chunks)]

            for start in range(0, len(items), batch):
                part = list(items[start:start + batch])
                for results in run([part[i:i + chunk] for i in range(0, len(part), chunk)]):
                    yield from results

    return mapper


def mapper_from_params(section: Section, flow_name: str) -> Mapper:
    runner = section.get("runner", str, "threads")
    workers = section.positive("workers")
    if runner == "threads":
        return thread_map(workers)
    if runner == "processes":
        return process_map(workers)
    if runner == "dask":
        return dask_map(flow_name, None, workers)
    if runner.startswith(("tcp://", "tls://", "ucx://")):
        return dask_map(flow_name, runner, workers)
    raise ParamsError(f"params: '{section.path}.runner' must be threads, processes, dask or a Dask scheduler "
                      f"address (tcp://host:8786), got {runner!r}")
