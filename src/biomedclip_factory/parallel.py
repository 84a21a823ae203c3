"""How per-article work is spread out: a *mapper* runs one function over many items.

The library only needs "apply ``fn`` to each item, give me the results in order"; where that
happens is the caller's choice. ``thread_map`` runs in this process (I/O-bound scraping, PIL
releasing the GIL); the stages can pass a Prefect task-runner mapper instead, which puts the same
per-article calls on a Dask cluster when one machine is not enough. Functions and items must
then be picklable.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def progress_map(mapper: Mapper, fn: Callable[[T], R], items: Sequence[T], desc: str, unit: str,
                 progress: bool = True) -> Iterator[R]:
    """``mapper(fn, items)`` with a progress bar (rate and ETA) over the results as they arrive."""
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress) as bar:
        for result in mapper(fn, items):
            bar.update()
            yield result
