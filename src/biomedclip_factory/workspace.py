"""One flow run at a time in a project's workspace, and params.yaml put back after a run that was killed.

DVC locks a workspace only while it reproduces one stage, for ~3 s of waiting at most, and knows nothing of
what the flows do around it: a manual run started during the nightly one would rewrite params.yaml (its
profile or source) under the stages still running, or restore a failed stage's outputs under the other
run's feet. The lock is an ``flock`` on the project directory itself: the system drops it when its holder
dies, ``kill -9`` included, and no cleanup (``rm -rf .dvc/tmp``, ``git clean``) can remove it from under a
run. A stage command that outlived its killed flow holds no lock, so the next run looks for one too.
On NFS, which emulates ``flock`` as a POSIX lock that needs a file open for writing, the lock is a POSIX
lock on ``.dvc/tmp/flow-run.lock`` instead, which is weaker: deleting that file (``rm -rf .dvc/tmp``)
under a run lets another lock a new one, and POSIX locks belong to a process, so a second hold from the
same process is not refused (flow runs are separate processes).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import FactoryError
from .io import write_bytes_atomic

HOLDER = Path(".dvc") / "tmp" / "flow-run.holder"  # who holds the lock, for the message of whoever is refused
PARAMS_BEFORE_RUN = Path(".dvc") / "tmp" / "params.yaml.before-run"  # while a run's override is in place
OVERRIDE_DIGEST = Path(".dvc") / "tmp" / "params.yaml.override-sha256"  # what the run wrote in its place
LOCK_FILE = Path(".dvc") / "tmp" / "flow-run.lock"  # where the directory cannot be flock'ed (NFS)
# What flock on a directory opened read-only answers where the filesystem cannot grant it: NFS (EBADF),
# Lustre mounted without flock (ENOSYS), some FUSE filesystems (EOPNOTSUPP, EINVAL, ENOLCK).
NO_FLOCK = (errno.EBADF, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOLCK)


class WorkspaceBusyError(FactoryError):
    """Another flow run, or a stage command one left behind, is working in the project."""


@contextlib.contextmanager
def workspace_held(project: Path) -> Iterator[None]:
    """Hold ``project`` for one flow run, or fail at once naming what holds it; on entry, a params.yaml
    that a killed run left overridden is put back first."""
    holder = project / HOLDER
    try:
        fd = _locked(project)
    except BlockingIOError:
        said = holder.read_text().strip() if holder.is_file() else "holder unknown"
        raise WorkspaceBusyError(f"{project}: another pipeline or retrain run holds this workspace ({said}); "
                                 "run again once it ends") from None
    try:
        running = stage_processes(project)
        if running:
            raise WorkspaceBusyError(f"{project}: stage commands already run in this workspace (pids "
                                     f"{', '.join(str(p.pid) for p in running)}: a `dvc repro`, or left by a run "
                                     "that was killed): wait for them or stop them, then run again")
        holder.parent.mkdir(parents=True, exist_ok=True)
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        _put_back_params(project, "a run killed before it could put it back")
        yield
    finally:
        os.close(fd)  # and with it the lock


def _locked(project: Path) -> int:
    """An fd holding ``project``'s lock (closing it releases it); BlockingIOError while another holds it."""
    fd = os.open(project, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError) or exc.errno not in NO_FLOCK:
            raise
    (project / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(project / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):  # POSIX's two words for "held"
            raise BlockingIOError(exc.errno, exc.strerror) from None
        raise FactoryError(f"{project}: its filesystem grants no file locks ({exc.strerror}), so two flow runs "
                           "could work in it at once: mount it with locking (NFS: without 'nolock', lockd "
                           "running; Lustre: -o flock) or keep the project on a local disk") from None


def stage_processes(project: Path, stage: str | None = None) -> list:
    """This user's processes running a DVC stage command (``stage``, or any) of ``project``: DVC puts
    ``DVC_STAGE`` and ``DVC_ROOT`` in each command's environment."""
    import psutil

    def runs(process: psutil.Process) -> bool:
        try:
            env = process.environ()
        except psutil.Error:  # gone, or another user's
            return False
        return ("DVC_STAGE" in env and (stage is None or env["DVC_STAGE"] == stage)
                and Path(env.get("DVC_ROOT", "/nonexistent")).resolve() == root)

    root = project.resolve()

    me = os.getpid()
    return [p for p in psutil.process_iter() if p.pid != me and runs(p)]


@contextlib.contextmanager
def params_overridden(project: Path, override: bytes) -> Iterator[None]:
    """params.yaml replaced by ``override`` for a run; afterwards, and on the next run's entry if this one is
    killed before that, put back byte for byte (comments included), unless someone edited it meanwhile."""
    params, before, digest = project / "params.yaml", project / PARAMS_BEFORE_RUN, project / OVERRIDE_DIGEST
    before.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(digest, hashlib.sha256(override).hexdigest().encode())
    write_bytes_atomic(before, params.read_bytes())  # present only with its digest beside it
    write_bytes_atomic(params, override)
    try:
        yield
    finally:
        _put_back_params(project)


def _put_back_params(project: Path, why: str | None = None) -> None:
    """params.yaml as it was before a run's override, if that override is still what it holds; ``why`` is
    said when it was put back. An edit made since (by hand, a ``git pull``) is kept, and said."""
    params, before, digest = project / "params.yaml", project / PARAMS_BEFORE_RUN, project / OVERRIDE_DIGEST
    if not before.is_file():
        digest.unlink(missing_ok=True)
        return
    current = params.read_bytes() if params.is_file() else b""
    if digest.is_file() and hashlib.sha256(current).hexdigest() == digest.read_text().strip():
        if why:
            print(f"workspace: params.yaml put back as it was before the override of {why}", flush=True)
        write_bytes_atomic(params, before.read_bytes())
    elif current != before.read_bytes():
        print("workspace: params.yaml was edited while a run's override was in place: kept as edited",
              flush=True)
    before.unlink()
    digest.unlink(missing_ok=True)

