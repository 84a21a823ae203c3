"""How per-article work is spread out: a *mapper* runs one function over many items.

The library only needs "apply ``fn`` to each item, give me the results in order"; where that
happens is the caller's choice. ``thread_map`` runs in this process (I/O-bound scraping, PIL
releasing the GIL); ``process_map`` runs worker processes on this machine (align's XML and
caption work holds the GIL); the stages can pass a Prefect task-runner mapper instead, which puts
the same per-article calls on a Dask cluster when one machine is not enough. Functions and items
must then be picklable.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


class Mapper(Protocol):
    def __call__(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """``fn`` applied to every item; results in the items' order."""


def thread_map(workers: int) -> Mapper:
    """A mapper over a pool of ``workers`` threads in this process."""

    def mapper(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(fn, items)

    return mapper


# Each worker process is one of ``workers`` parallel lanes: its numeric libraries (torch's resize,
# numpy) must not start a thread per core each, as Dask's nanny also ensures for its workers.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _one_thread_per_process() -> None:
    os.environ.update(_ONE_THREAD)  # for libraries imported from here on
    torch = sys.modules.get("torch")  # the forkserver may have imported it already, with __main__
    if torch is not None:
        torch.set_num_threads(1)


def process_map(workers: int) -> Mapper:
    """A mapper over ``workers`` fresh processes (forkserver: no inherited threads or locks)."""

    def mapper(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_per_process) as pool:
            yield from pool.map(fn, items, chunksize=4)  # fewer round trips, results still in order

    return mapper


def progress_map(mapper: Mapper, fn: Callable[[T], R], items: Sequence[T], desc: str, unit: str,
                 progress: bool = True) -> Iterator[R]:
    """``mapper(fn, items)`` with a progress bar (rate and ETA) over the results as they arrive."""
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        for result in mapper(fn, items):
            bar.update()
            yield result
