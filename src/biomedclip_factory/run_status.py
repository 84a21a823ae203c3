"""How a stage's MLflow run ends when its process does: a killed stage's run says KILLED, never RUNNING.

A process stopped by SIGTERM (the flow stopping a cancelled stage, ``docker stop``, a cluster's
preemption) dies without unwinding, and SIGKILL or the OOM killer leave no chance at all: MLflow's run
then stays RUNNING forever, and a dashboard cannot tell it from a live one. So SIGTERM unwinds like
Ctrl-C, and each run names the process that owns it; at the next stage start, a RUNNING run whose
process is gone from this machine is closed as KILLED. Runs of other machines are left alone: their
processes cannot be seen from here.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Any, Iterator

import psutil

MACHINE_TAG, PID_TAG, STARTED_TAG = "process.machine", "process.pid", "process.started"


def _machine() -> str:
    """This host and its PID namespace: containers on one host may share a name but not their PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def owner_tags() -> dict[str, str]:
    """Tags naming this process: machine, PID and start time (a PID is reused; its start time is not)."""
    return {MACHINE_TAG: _machine(), PID_TAG: str(os.getpid()), STARTED_TAG: repr(psutil.Process().create_time())}


def _alive(pid: str, started: str) -> bool:
    try:
        return repr(psutil.Process(int(pid)).create_time()) == started
    except (psutil.Error, ValueError):
        return False


def close_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Close as KILLED this machine's RUNNING runs whose process is gone; returns their ids."""
    runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                                             f"tags.`{MACHINE_TAG}` = '{_machine()}'")
    dead = [run for run in runs if not _alive(run.data.tags.get(PID_TAG, ""), run.data.tags.get(STARTED_TAG, ""))]
    for run in dead:
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in dead]


class Terminated(SystemExit):
    """SIGTERM, raised where the process is, so that it unwinds (exit status 128 + 15, as the signal's)."""


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within it, SIGTERM raises ``Terminated`` (only the main thread can take a signal's handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
