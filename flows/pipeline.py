"""The DAG once, as a Prefect flow: one task per DVC stage, in dependency order.

Each task asks DVC to reproduce exactly its stage, so DVC still decides what is up to date and
records dvc.lock; Prefect adds retries (the network-facing scrape), logs and run history.
Runs with no server (Prefect's ephemeral local API): ``python -m flows.pipeline``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("scrape", "align", "shard", "tokenizer", "pretrain", "evaluate", "register")


def _reproduce(stage: str, project: Path, force: bool) -> list[str]:
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # Stage commands call `python`: make it this interpreter (the project's venv).
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # DVC resolves stage paths against the working directory: run from inside the project.
    with contextlib.chdir(project), Repo(str(project)) as repo:
        try:
            done = repo.reproduce(stage, single_item=True, force=force)
        except Exception:
            _restore_last_good(repo, stage)
            raise
    return [s.addressing for s in done]


def _restore_last_good(repo: Any, stage: str) -> None:
    """DVC deletes a stage's outputs before running it, so a failed run leaves none: put the last good
    ones (those dvc.lock names) back from DVC's cache, so a failed nightly run leaves a working project."""
    from dvc.exceptions import DvcException

    try:
        repo.checkout(targets=[stage], force=True)
        print(f"{stage}: failed; its last good outputs are restored from DVC's cache", flush=True)
    except DvcException as exc:  # never run before, or its cache is gone: nothing to restore
        print(f"{stage}: failed, and its last outputs could not be restored ({exc})", flush=True)


@task(name="dvc-stage", retries=0, task_run_name="{stage}")
def run_stage(stage: str, project: Path, force: bool = False) -> list[str]:
    ran = _reproduce(stage, project, force)
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date")
    return ran


@task(name="dvc-stage-scrape", retries=3, retry_delay_seconds=[10, 60, 300], task_run_name="scrape")
def run_scrape(project: Path, force: bool = False) -> list[str]:
    """Scrape talks to the network: transient failures retry with growing delays."""
    return run_stage.fn("scrape", project, force)


@flow(name="biomedclip-pipeline", log_prints=True)
def pipeline(project: str = str(ROOT), force: bool = False, scrape_retries: int = 3) -> dict[str, bool]:
    """Reproduce every stage in order; returns which stages actually ran."""
    path = Path(project)
    ran = {"scrape": bool(run_scrape.with_options(retries=scrape_retries)(path, force))}
    for stage in STAGES[1:]:
        ran[stage] = bool(run_stage(stage, path, force))
    return ran


if __name__ == "__main__":
    print(pipeline())
