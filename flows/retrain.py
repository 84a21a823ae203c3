"""Scheduled retraining: pick up new or changed PMC article versions, rebuild what changed, promote or not.

Scrape is always re-run (it lists the source and fetches only what is new or changed since the last
run: files already present with the right md5 are skipped). DVC then rebuilds only the stages whose
inputs changed, so a day with nothing new trains nothing; when something changed, the new model is
evaluated and registered. Register runs every time (the registry is outside what DVC hashes: a build
registered before is a lookup), and the promotion gate decides whether the build is ``champion``.

    python -m flows.retrain                       # one run now
    python -m flows.retrain --serve --cron "0 3 * * *" --timezone Europe/Berlin    # the schedule, run here
Failures notify through a saved Prefect notification block, named ``<block-type>/<name>``
(``notify_block``), e.g. ``custom-webhook/retrain-alerts`` or ``slack-webhook/ml-team``; so does a run
that completes but whose model the gate had to refuse because the champion is broken, since every later
run will refuse its model too until someone repairs the registry.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, get_client, get_run_logger, task
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterExpectedStartTime,
                                            FlowRunFilterState, FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.context import FlowRunContext
from prefect.deployments.runner import EntrypointType
from prefect.logging import get_logger

from biomedclip_factory.workspace import params_overridden, stage_processes, workspace_held

from .pipeline import ROOT, run_all, stop_stage_commands

DEFAULT_CRON = "0 3 * * *"
DEFAULT_TIMEZONE = "UTC"


@contextlib.contextmanager
def overridden_params(project: Path, profile: str | None, source: str | None) -> Iterator[None]:
    """``params/<profile>.yaml`` and/or another scrape source for this run only (params.yaml's comments
    kept): params.yaml is put back as it was afterwards, failed or not, and by the next run if this one is
    killed first, so one manual run with other parameters does not become every later scheduled run's."""
    from dvc.utils.serialize import modify_yaml

    if not profile and not source:
        yield
        return
    params_file = project / "params.yaml"
    if profile:
        params_file = project / "params" / f"{profile}.yaml"
        if not params_file.is_file():
            raise FileNotFoundError(f"retrain: no profile {params_file}")
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "params.yaml"
        draft.write_bytes(params_file.read_bytes())
        if source:
            with modify_yaml(str(draft)) as params:
                params["scrape"]["source"] = source
        override = draft.read_bytes()
    with params_overridden(project, override):
        yield


@contextlib.contextmanager
def deadline(project: Path, hours: float | None, on_stuck: Callable[[str], None], grace_s: float = 600.0,
             poll_s: float = 5.0) -> Iterator[threading.Event]:
    """A run that hangs (a stalled NFS mount, an NCCL deadlock) holds the schedule with no alert, every later
    night waiting behind it. Past ``hours`` a watchdog stops the project's stage commands (and any that
    starts after) until the run ends: the stage fails as a failed stage does, its last good outputs put
    back, and the run fails as timed out, which alerts; the next night runs as usual. The event yielded is
    set then, so that no stage starts and no retry begins. A run still going ``grace_s`` later (a command
    in uninterruptible I/O, a hang inside DVC itself) cannot end by itself: ``on_stuck`` says so, once.

    Not a signal to the flow's thread (Prefect's ``timeout``): that needs the main thread and a free
    SIGALRM, else it is an exception raised at the next bytecode, after the blocked wait on the stage ends
    by itself, hours later; and it could land in the middle of the restore."""
    expired, ended = threading.Event(), threading.Event()
    if hours is None:
        yield expired
        return
    if not 0 < hours * 3600 < threading.TIMEOUT_MAX:
        raise ValueError(f"retrain: timeout_hours must be > 0 and finite, got {hours}")

    def watch() -> None:
        if ended.wait(hours * 3600):
            return
        expired.set()
        print(f"retrain: past timeout_hours ({hours:g} h): stopping its stage", flush=True)
        stuck_at = time.monotonic() + grace_s
        while not ended.is_set():
            stop_stage_commands(project)
            if stuck_at is not None and time.monotonic() >= stuck_at:
                stuck_at = None
                left = ", ".join(str(p.pid) for p in stage_processes(project)) or "none"
                try:
                    on_stuck(f"past timeout_hours ({hours:g} h) and still running {grace_s:g} s after its stage "
                             f"commands were stopped (stage processes left: {left}); a command in uninterruptible "
                             "I/O or a hang inside DVC: see to it by hand")
                except Exception as exc:  # noqa: BLE001 - the user's notification block
                    print(f"retrain: the stuck-run alert was not sent: {exc}", flush=True)
            ended.wait(poll_s)

    # In the flow's context, so that its prints reach the run's log.
    watchdog = threading.Thread(target=contextvars.copy_context().run, args=(watch,), name="retrain-deadline",
                                daemon=True)
    watchdog.start()
    try:
        yield expired
    except Exception as exc:
        if expired.is_set():
            raise TimeoutError(f"retrain: stopped after {hours:g} h (timeout_hours); the stage it was in has its "
                               "last good outputs back") from exc
        raise
    finally:
        ended.set()
        watchdog.join(timeout=60)  # a psutil read stuck on a process in the kernel must not hold the run


def notify(block_name: str | None, subject: str, body: str) -> None:
    """Send through the saved notification block, when one is configured."""
    if not block_name:
        return
    from prefect.blocks.core import Block

    Block.load(block_name).notify(body=body, subject=subject)


def alert_blocked(block_name: str | None, registered: dict[str, Any]) -> None:
    """Say that the gate refused this run's model because the champion is broken. The run itself completed:
    an alert that cannot be sent is a warning in its log, not a failed run that skips ``dvc push``."""
    reason = registered["promotion_reason"]
    get_run_logger().warning("retrain: model not promoted until the champion is repaired: %s", reason)
    try:
        notify(block_name, f"biomedclip retrain needs attention: v{registered['version']} not promoted", reason)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's notification block
        get_run_logger().warning("retrain: the alert through %s was not sent: %s", block_name, exc)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_failure and on_crashed hook: send the failure or crash through the configured notification
    block."""
    ended = {"TimedOut": "timed out"}.get(state.name, state.name.lower())  # failed | crashed | timed out
    notify((flow_run.parameters or {}).get("notify_block"), f"biomedclip retrain {ended} ({flow_run.name})",
           f"{flow_run.name} {ended}: {state.message}")


# A run whose process is stopped (SIGTERM: `docker stop`, an eviction, a preempted node) or dies ends Crashed,
# not Failed, and Prefect then runs only on_crashed hooks: the alert goes on both.
@flow(name="biomedclip-retrain", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def retrain(project: str = str(ROOT), profile: str | None = None, source: str | None = None,
            push: bool = False, notify_block: str | None = None, scrape_retries: int = 3,
            push_retries: int = 3, timeout_hours: float | None = None) -> dict[str, Any]:
    """One scheduled run; returns which stages ran, whether a model was trained and if it was promoted."""
    later = superseding_run()
    if later is not None:  # that run lists the source after this one would: all this one would find, and more
        get_run_logger().info("retrain: skipped, superseded by %s, due already with the same parameters", later)
        return {"ran": {}, "trained": False, "promoted": False, "reason": f"superseded by {later}"}
    path = Path(project)
    context = FlowRunContext.get()
    name = context.flow_run.name if context and context.flow_run else "retrain"

    def stuck(message: str) -> None:
        notify(notify_block, f"biomedclip retrain stuck ({name})", f"{name}: {message}")

    with workspace_held(path), deadline(path, timeout_hours, on_stuck=stuck) as stopped:
        with overridden_params(path, profile, source):
            ran = run_all(path, force=False, scrape_retries=scrape_retries, force_scrape=True, stopped=stopped)
        registered = json.loads((path / "metrics" / "register.json").read_text())  # register runs every time
        result: dict[str, Any] = {"ran": ran, "trained": ran["pretrain"], "promoted": bool(registered["promoted"]),
                                  "reason": registered["promotion_reason"]}
        if registered["blocked"]:  # each night until someone repairs the champion
            alert_blocked(notify_block, registered)
        get_run_logger().info("retrain: %s", result)
        if push:
            try:
                push_outputs.with_options(retries=push_retries)(path)
            except Exception as exc:  # the alert must say what did happen: the model may be champion already
                raise RuntimeError(f"retrain: {result}, but `dvc push` failed ({str(exc)[:500]}): the remote lacks "
                                   "this run's data and model until a later run pushes them") from exc
    return result


@task(name="dvc-push", retries=3, retry_delay_seconds=[10, 60, 300])
def push_outputs(project: Path) -> None:
    """``dvc push`` talks to the network: transient failures retry with growing delays."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        repo.push()


def superseding_run() -> str | None:
    """The name of a later run of this run's deployment, due already, with the same parameters.

    Runs wait their turn (one at a time): after a week-long training, or a serve process restarted after an
    unclean stop, a night's run can find the next nights' runs due behind it. Each lists the source anew
    and finds all that is new, so only the latest needs to run: the others end at once, Completed, saying
    which run superseded them. A run outside a deployment (``python -m flows.retrain``) has none."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None or run.expected_start_time is None:
        return None
    with get_client(sync_client=True) as client:
        due = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[run.deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=run.expected_start_time)))
    now = datetime.now(timezone.utc)
    later = sorted((r.expected_start_time, r.name) for r in due if r.id != run.id and r.parameters == run.parameters
                   and run.expected_start_time < r.expected_start_time <= now)
    return later[-1][1] if later else None


def poll_through_outages() -> None:
    """Keep serving while the Prefect API is down.

    Prefect's runner stops after three failed polls in a row (``critical_service_loop``), and stopping
    kills the run it executes: a server restart of a few minutes would end a week's training, and with the
    serve process gone no later night would run or alert. A poll that cannot reach the API is logged here,
    and the next one comes at the usual interval; the run in progress goes on. (Prefect 3.9's runner, its
    poller's one workload; tests/test_servers.py fails if an upgrade moves it.)"""
    from prefect.runner._scheduled_run_poller import ScheduledRunPoller

    poll = ScheduledRunPoller._get_and_submit_flow_runs
    if getattr(poll, "tolerates_outages", False):
        return

    async def tolerant(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            await poll(self, *args, **kwargs)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                raise  # an answer, not an outage: refused or misconfigured
            get_logger("flows.retrain").warning("retrain: the Prefect API did not answer the poll for scheduled "
                                                "runs (%s); serving on, the run in progress goes on", exc)

    tolerant.tolerates_outages = True  # type: ignore[attr-defined]
    ScheduledRunPoller._get_and_submit_flow_runs = tolerant  # type: ignore[method-assign]


def serve(name: str, cron: str, tz: str, parameters: dict[str, Any]) -> None:
    """Register ``retrain`` on a cron schedule (in ``tz``) and execute its runs here, one at a time, until stopped.

    This process is the worker: a deployment registered without one (``to_deployment().apply()``
    with no work pool) is scheduled but never executed. ``limit=1`` keeps a long run and the next night's
    from sharing one DVC workspace: the next night waits, and then ends at once if a later one is due too
    (``superseding_run``). Not a deployment concurrency limit: the server keeps its slot as a lease in
    memory, so a server restart cancels the run that holds it, and a run whose process died while the server
    was down keeps the slot for ever: every later night is cancelled, with no process to send an alert.
    """
    # The flow as its module's name gives it: run as ``python -m flows.retrain`` this module is
    # ``__main__``, an entrypoint that no other process (a work-pool worker, a restart) can import.
    from flows.retrain import retrain as importable

    poll_through_outages()
    importable.serve(name=name, schedule=CronSchedule(cron=cron, timezone=tz), parameters=parameters, limit=1,
                     entrypoint_type=EntrypointType.MODULE_PATH)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true",
                    help="register the cron schedule with the Prefect server (PREFECT_API_URL) and run it here")
    ap.add_argument("--name", default="nightly")
    ap.add_argument("--cron", default=DEFAULT_CRON)
    ap.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="the IANA zone the cron's hours are in (default UTC)")
    ap.add_argument("--profile")
    ap.add_argument("--source")
    ap.add_argument("--push", action="store_true")
    ap.add_argument("--notify-block")
    ap.add_argument("--timeout-hours", type=float, help="stop and fail (and alert) a run still going after this long")
    args = ap.parse_args()
    params = {"profile": args.profile, "source": args.source, "push": args.push, "notify_block": args.notify_block,
              "timeout_hours": args.timeout_hours}
    if args.serve:
        serve(args.name, args.cron, args.timezone, params)
    else:
        print(retrain(**params))
