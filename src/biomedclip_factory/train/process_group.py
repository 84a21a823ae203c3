"""The process group a run trains in, and the DeepSpeed engines built in it, from start to a clean end.

A rank must leave with nothing of DeepSpeed's still holding the group: its gloo threads would otherwise
die in interpreter teardown, and a long-lived process (a Prefect worker, a notebook) would keep a whole
model per run.
"""
from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import deepspeed
import torch

from ..net import free_port


_ONE_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_ENGINES: list[Any] = []  # built since the process group started; released before it goes


def track_engine(engine: Any) -> None:
    """Have ``distributed()`` release ``engine`` before its group goes (DeepSpeed never frees one itself)."""
    _ENGINES.append(engine)


def init_distributed() -> None:
    """Join the launcher's process group, or make a one-rank group when run as a plain process."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


@contextmanager
def distributed() -> Iterator[None]:
    """The process group for the length of a run, left cleanly at its end.

    A rank that exits with the group still alive can abort in C++ teardown ("terminate called without
    an active exception", SIGABRT) after its work succeeded, and the launcher then fails the whole run.
    So every engine built under it is released first (see ``_release_engines``), and the group goes.
    A one-rank group's environment goes with it, so processes started later pick their own port.
    """
    own = "RANK" not in os.environ  # init_distributed then sets the one-rank environment, removed below
    failed = True
    try:
        init_distributed()
        yield
        failed = False
    finally:
        try:
            _release_engines(quietly=failed)  # a run's own error is the one its caller hears of
        finally:
            if deepspeed.comm.is_initialized():  # DeepSpeed's own: it also drops the groups DeepSpeed cached,
                deepspeed.comm.destroy_process_group()  # which a second run in this process would find stale
            elif torch.distributed.is_initialized():  # a caller's group that never reached DeepSpeed
                torch.distributed.destroy_process_group()
            if own:
                for key in _ONE_RANK_ENV:
                    os.environ.pop(key, None)


def _release_engines(quietly: bool) -> None:
    """Destroy the engines built in this group and drop what DeepSpeed keeps of them.

    DeepSpeed alone never frees an engine: ZeRO's gradient hooks close over their parameters (a cycle
    the parameters' C++ side keeps), ZeRO-3 keeps its top module (and, after a failed forward, the
    submodules it was in) on a module-level stack (``FWD_MODULE_STACK``) and memoises per-submodule work
    in a class-wide ``lru_cache`` keyed by the submodule. Each keeps the model, its optimizer state and
    the process group alive after the group is destroyed: memory lost to every later run in a long-lived
    process, and gloo threads still running when the interpreter tears down, which aborted ranks under
    load. ``engine.destroy`` removes the hooks; the stack entries and the cache go here, and the collector
    frees the rest at once. Every engine is released even if one fails; ``quietly`` (a run already
    failing) reports such a failure instead of raising it over the run's own error.
    """
    from deepspeed.runtime.zero import parameter_offload

    if not _ENGINES:
        return
    modules = {id(module) for engine in _ENGINES for module in engine.module.modules()}
    failures = [failure for failure in map(_destroy, _ENGINES) if failure]
    _ENGINES.clear()
    stack = parameter_offload.FWD_MODULE_STACK
    stack[:] = [module for module in stack if id(module) not in modules]
    for cache in _zero3_submodule_caches():
        cache.cache_clear()
    gc.collect()
    if failures and not quietly:
        raise RuntimeError(f"releasing a DeepSpeed engine failed: {failures[0]}")
    for failure in failures:
        print(f"pretrain: releasing a DeepSpeed engine failed too: {failure}", file=sys.stderr, flush=True)


def _destroy(engine: Any) -> str | None:
    """``engine.destroy()``; its failure as text (an exception kept would keep the engine in its frames)."""
    try:
        engine.destroy()
    except Exception as error:  # noqa: BLE001 - reported or raised by the caller, with every engine released
        return f"{type(error).__name__}: {error}"
    return None


def _zero3_submodule_caches() -> list[Any]:
    """ZeRO-3's class-wide memo of the parameters each submodule releases (an ``lru_cache`` behind an NVTX
    wrapper, so found in the wrapper's closure)."""
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    method = vars(PartitionedParameterCoordinator).get("_PartitionedParameterCoordinator__params_to_release")
    candidates = [method, *(cell.cell_contents for cell in getattr(method, "__closure__", None) or ())]
    return [fn for fn in candidates if hasattr(fn, "cache_clear")]
