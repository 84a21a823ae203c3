"""The DAG once, as a Prefect flow: one task per DVC stage, in dependency order.

Each task asks DVC to reproduce exactly its stage, so DVC still decides what is up to date and
records dvc.lock; Prefect adds retries (the network-facing scrape), logs and run history.
Runs with no server (Prefect's ephemeral local API): ``python -m flows.pipeline``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, task

from biomedclip_factory.workspace import stage_processes, workspace_held

ROOT = Path(__file__).resolve().parent.parent
# ``inputs`` first: it runs every time (it digests what params name) and fails fast on a missing
# start or tokenizer dir, or a named path that is a pipeline output, before hours of scraping.
STAGES = ("inputs", "scrape", "align", "shard", "tokenizer", "pretrain", "evaluate", "register")


def _reproduce(stage: str, project: Path, force: bool) -> list[str]:
    from dvc.repo import Repo

    # DVC resolves stage paths against the working directory: run from inside the project.
    with _this_python_first(), contextlib.chdir(project), Repo(str(project)) as repo, \
            tempfile.TemporaryDirectory() as kept:
        outs = [out for found in repo.stage.collect(stage) for out in found.outs if not out.persist]
        uncached = _keep_copies([Path(out.fs_path) for out in outs if not out.use_cache], Path(kept))
        try:
            done = repo.reproduce(stage, single_item=True, force=force)
        except BaseException:  # a failure, and a cancelled run too (Prefect's TerminationSignal, Ctrl-C)
            stop_stage_commands(project, stage)
            _restore_last_good(repo, stage, [str(out.fs_path) for out in outs if out.use_cache], uncached)
            raise
    return [s.addressing for s in done]


@contextlib.contextmanager
def _this_python_first() -> Iterator[None]:
    """Stage commands call `python`: make it this interpreter (the project's venv) while DVC runs them,
    and leave the caller's PATH as it was (a worker or notebook runs other things after the flow)."""
    before, bin_dir = os.environ.get("PATH", ""), str(Path(sys.executable).parent)
    if not before.startswith(bin_dir):
        os.environ["PATH"] = bin_dir + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before


def stop_stage_commands(project: Path, stage: str | None = None, grace_s: float = 10.0) -> None:
    """An interrupted DVC leaves its stage's command running. Unstopped, that command would go on
    (holding the GPUs) and swap its outputs in after the last good ones were restored; a signal
    to this process alone (``kill``, a supervisor) reaches no child. Stop every process running this
    project's ``stage`` (any stage: ``None``) with all its descendants, workers and launchers included.
    Never in the way of the restore that follows."""
    import psutil

    try:
        found = stage_processes(project, stage)
        running = {p.pid: p for p in found}
        for process in found:  # a descendant that cleaned its environment is still the stage's
            with contextlib.suppress(psutil.Error):
                running.update((c.pid, c) for c in process.children(recursive=True))
        for signal_them in (psutil.Process.terminate, psutil.Process.kill):
            for process in running.values():
                with contextlib.suppress(psutil.Error):
                    signal_them(process)
            left = psutil.wait_procs(list(running.values()), timeout=grace_s)[1]
            running = {p.pid: p for p in left}
            if not running:
                break
        if found:
            print(f"{stage or 'stages'}: stopped its command ({len(found)} processes)", flush=True)
    except Exception as exc:  # the restore must still run
        print(f"{stage or 'stages'}: could not stop its command ({exc})", flush=True)


def _keep_copies(paths: list[Path], into: Path) -> dict[Path, Path]:
    """Copies of the outputs DVC does not cache (metrics, plots), which it too deletes before a run."""
    copies = {}
    for number, path in enumerate(paths):
        if path.exists():
            copies[path] = into / str(number)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, copies[path])
    return copies


def _restore_last_good(repo: Any, stage: str, cached: list[str], uncached: dict[Path, Path]) -> None:
    """DVC deletes a stage's outputs before running it, so a failed run leaves none: put the last good
    ones back (cached ones from DVC's cache as dvc.lock names them, metrics and plots from the copies
    taken before the run), so a failed nightly run leaves a working project. Persisted outputs (the
    scrape's data/raw) are left as the run left them: they hold fetched work the retry builds on."""
    from dvc.exceptions import DvcException

    for path, copy in uncached.items():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        (shutil.copytree if copy.is_dir() else shutil.copy2)(copy, path)
    try:
        if cached:
            repo.checkout(targets=cached, force=True)
        print(f"{stage}: failed; its last good outputs are restored", flush=True)
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
    with workspace_held(Path(project)):
        return run_all(Path(project), force, scrape_retries, force_scrape=force)


def run_all(project: Path, force: bool, scrape_retries: int, force_scrape: bool,
            stopped: threading.Event | None = None) -> dict[str, bool]:
    """Each stage in order, scrape with its network retries; which stages actually ran. Once ``stopped`` is set
    (the run is past its deadline) no stage starts and no scrape retries."""
    stopped = stopped or threading.Event()
    scrape = run_scrape.with_options(retries=scrape_retries, retry_condition_fn=lambda *_: not stopped.is_set())
    ran = {}
    for stage in STAGES:
        if stopped.is_set():
            raise RuntimeError(f"{stage}: not started, the run was stopped")
        ran[stage] = bool(scrape(project, force_scrape) if stage == "scrape" else run_stage(stage, project, force))
    return ran


if __name__ == "__main__":
    print(pipeline())
