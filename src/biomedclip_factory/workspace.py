"""One flow run at a time in a project's workspace, and params.yaml put back after a run that was killed.

DVC locks a workspace only while it reproduces one stage, for ~3 s of waiting at most, and knows nothing of
what the flows do around it: a manual run started during the nightly one would rewrite params.yaml (its
profile or source) under the stages still running, or restore a failed stage's outputs under the other
run's feet. The lock is an ``flock`` on a file in ``.dvc/tmp``: the system drops it when its holder dies,
``kill -9`` included, so a dead run never holds the workspace.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import FactoryError

LOCK = Path(".dvc") / "tmp" / "flow-run.lock"
PARAMS_BEFORE_RUN = Path(".dvc") / "tmp" / "params.yaml.before-run"  # while a run's override is in place


class WorkspaceBusyError(FactoryError):
    """Another flow run holds the project's workspace."""


@contextlib.contextmanager
def workspace_held(project: Path) -> Iterator[None]:
    """Hold ``project`` for one flow run, or fail at once naming the run that holds it; on entry, a params.yaml
    that a killed run left overridden is put back first."""
    lock = project / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise WorkspaceBusyError(f"{project}: another pipeline or retrain run holds this workspace "
                                     f"({handle.read().strip() or 'holder unknown'}); run again once it ends") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        handle.flush()
        try:
            _put_back_params(project, "a run killed before it could put it back")
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def params_kept(project: Path) -> Iterator[Path]:
    """Yield params.yaml for a run to override; afterwards, and on the next run's entry if this one is
    killed before that, it is put back byte for byte (comments included)."""
    params, before = project / "params.yaml", project / PARAMS_BEFORE_RUN
    before.parent.mkdir(parents=True, exist_ok=True)
    tmp = before.with_suffix(".tmp")
    tmp.write_bytes(params.read_bytes())
    os.replace(tmp, before)  # whole or absent: a kill mid-write must not leave half a params.yaml to restore
    try:
        yield params
    finally:
        _put_back_params(project)


def _put_back_params(project: Path, why: str | None = None) -> None:
    """params.yaml as it was before a run's override, if one is in place; ``why`` is said when it was."""
    before = project / PARAMS_BEFORE_RUN
    if not before.is_file():
        return
    params = project / "params.yaml"
    if params.read_bytes() != before.read_bytes():
        if why:
            print(f"workspace: params.yaml put back as it was before the override of {why}", flush=True)
        tmp = params.with_suffix(".yaml.tmp")
        tmp.write_bytes(before.read_bytes())
        os.replace(tmp, params)
    before.unlink()
