"""Scheduled retraining: pick up new or changed PMC article versions, rebuild what changed, promote or not.

Scrape is always re-run (it lists the source and fetches only what is new or changed since the last
run: files already present with the right md5 are skipped). DVC then rebuilds only the stages whose
inputs changed, so a day with nothing new trains nothing; when something changed, the new model is
evaluated and registered. Register runs every time (the registry is outside what DVC hashes: a build
registered before is a lookup), and the promotion gate decides whether the build is ``champion``.

    python -m flows.retrain                       # one run now
    python -m flows.retrain --serve --cron "0 3 * * *"    # the schedule, run by this process
Failures notify through a saved Prefect notification block, named ``<block-type>/<name>``
(``notify_block``), e.g. ``custom-webhook/retrain-alerts`` or ``slack-webhook/ml-team``; so does a run
that completes but whose model the gate had to refuse because the champion is broken, since every later
run will refuse its model too until someone repairs the registry.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType

from biomedclip_factory.workspace import params_overridden, workspace_held

from .pipeline import ROOT, run_all

DEFAULT_CRON = "0 3 * * *"


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
    ended = state.name.lower()  # failed | crashed
    notify((flow_run.parameters or {}).get("notify_block"), f"biomedclip retrain {ended} ({flow_run.name})",
           f"{flow_run.name} {ended}: {state.message}")


# A run whose process is stopped (SIGTERM: `docker stop`, an eviction, a preempted node) or dies ends Crashed,
# not Failed, and Prefect then runs only on_crashed hooks: the alert goes on both.
@flow(name="biomedclip-retrain", log_prints=True, on_failure=[notify_failure], on_crashed=[notify_failure])
def retrain(project: str = str(ROOT), profile: str | None = None, source: str | None = None,
            push: bool = False, notify_block: str | None = None, scrape_retries: int = 3,
            push_retries: int = 3) -> dict[str, Any]:
    """One scheduled run; returns which stages ran, whether a model was trained and if it was promoted."""
    path = Path(project)
    with workspace_held(path):
        with overridden_params(path, profile, source):
            ran = run_all(path, force=False, scrape_retries=scrape_retries, force_scrape=True)
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


def serve(name: str, cron: str, parameters: dict[str, Any]) -> None:
    """Register ``retrain`` on a cron schedule and execute its runs here, one at a time, until stopped.

    This process is the worker: a deployment registered without one (``to_deployment().apply()``
    with no work pool) is scheduled but never executed. A deployment limit of 1 keeps a long run and
    the next night's from sharing one DVC workspace, and CANCEL_NEW cancels a night that comes while
    one still runs (Prefect's default queues it: a week-long training would be followed by seven
    retrains back to back, each listing the source again, where the next one alone finds all that is new).
    """
    # The flow as its module's name gives it: run as ``python -m flows.retrain`` this module is
    # ``__main__``, an entrypoint that no other process (a work-pool worker, a restart) can import.
    from flows.retrain import retrain as importable

    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    importable.serve(name=name, cron=cron, parameters=parameters, global_limit=one_at_a_time, limit=1,
                     entrypoint_type=EntrypointType.MODULE_PATH)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true",
                    help="register the cron schedule with the Prefect server (PREFECT_API_URL) and run it here")
    ap.add_argument("--name", default="nightly")
    ap.add_argument("--cron", default=DEFAULT_CRON)
    ap.add_argument("--profile")
    ap.add_argument("--source")
    ap.add_argument("--push", action="store_true")
    ap.add_argument("--notify-block")
    args = ap.parse_args()
    params = {"profile": args.profile, "source": args.source, "push": args.push, "notify_block": args.notify_block}
    if args.serve:
        serve(args.name, args.cron, params)
    else:
        print(retrain(**params))
