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
import functools
import os
import signal
import socket
import threading
from pathlib import Path
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


def _started(pid: int) -> str | None:
    """When process ``pid`` started (None: there is none), in terms a clock step does not move: on Linux
    the boot's id and the kernel's start tick (psutil's wall-clock start time moves when NTP steps the
    clock, and a live days-long training would look like another process); elsewhere psutil's."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f"{boot}:{fields[19]}"  # field 22, starttime; the command name before ")" may hold spaces
    except FileNotFoundError:
        return None if Path("/proc/self/stat").is_file() else _started_by_psutil(pid)
    except (OSError, IndexError):
        return _started_by_psutil(pid)


def _started_by_psutil(pid: int) -> str | None:
    try:
        return repr(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def owner_tags() -> dict[str, str]:
    """Tags naming this process: machine, PID and start (a PID is reused; its start is not)."""
    return {MACHINE_TAG: _machine(), PID_TAG: str(os.getpid()), STARTED_TAG: str(_started(os.getpid()))}


def _alive(pid: str, started: str) -> bool:
    return pid.isdigit() and _started(int(pid)) == started


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


def _raise_terminated(owner: int, signum: int, _frame: Any) -> None:
    if os.getpid() != owner:  # a forked child (a DataLoader worker) inherited it: die of the signal, as before
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within it, SIGTERM raises ``Terminated`` in this process (only the main thread can take a signal's
    handler); processes forked meanwhile still die of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, functools.partial(_raise_terminated, os.getpid()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
