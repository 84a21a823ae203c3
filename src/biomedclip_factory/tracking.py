"""MLflow wiring shared by the stages: a local SQLite store by default, one run per stage."""
from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from .errors import AccessError, TrackingServerError
from .run_status import Terminated, close_dead_runs, owner_tags, sigterm_unwinds

EXPERIMENT = "biomedclip-factory"
REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's names for HTTP 401 and 403


def tracking_uri(project_root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite DB inside the project (no server needed)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_root / 'mlflow.db').resolve()}"


def configure(project_root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri(project_root)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    if uri.startswith(("http://", "https://", "databricks")):
        return mlflow.create_experiment(EXPERIMENT)  # the server decides where artifacts go
    # A local store: MLflow's default artifact root is ./mlruns of whatever the working directory
    # is, so pin it inside the project.
    return mlflow.create_experiment(EXPERIMENT, artifact_location=(project_root / "mlartifacts").resolve().as_uri())


@contextlib.contextmanager
def stage_run(stage: str, project_root: Path, params: dict[str, Any], continues: str | None = None) -> Iterator[Any]:
    """An MLflow run for one stage execution, with its params section flattened. It ends KILLED when the
    stage is stopped (Ctrl-C, SIGTERM), FAILED when it fails; runs this machine's killed stages left
    RUNNING are closed first (``run_status``). ``continues`` names the run of the execution this one resumes
    (a pretraining killed mid-way): it is reopened, so one run holds the whole loss curve."""
    import mlflow

    uri = tracking_uri(project_root)
    with server_errors_named(uri):
        announce_if_silent(uri, stage)
        experiment_id = configure(project_root)
        try:
            for run_id in close_dead_runs(mlflow.MlflowClient(), experiment_id):
                print(f"{stage}: MLflow run {run_id} was left running by a process that is gone: marked KILLED",
                      flush=True)
        except Exception as exc:  # noqa: BLE001 - bookkeeping (another user's run: 403) never stops a stage
            print(f"{stage}: could not close MLflow runs left running by dead processes ({str(exc)[:300]})",
                  file=sys.stderr, flush=True)
        with sigterm_unwinds():
            reopened = _reopenable(mlflow.MlflowClient(), continues, experiment_id, stage)
            run, status = mlflow.start_run(run_id=reopened, experiment_id=None if reopened else experiment_id,
                                           run_name=None if reopened else stage,
                                           tags={"stage": stage, **owner_tags()}), "FAILED"
            try:
                _log_params(run, _flatten(params, stage))
                yield run
                status = "FINISHED"
            except (KeyboardInterrupt, Terminated):
                status = "KILLED"
                raise
            finally:
                try:
                    mlflow.end_run(status)
                except Exception as exc:  # noqa: BLE001 - the stage's outputs stand; its run's end is bookkeeping
                    print(f"{stage}: could not mark MLflow run {run.info.run_id} {status} ({str(exc)[:300]}): it "
                          "stays RUNNING until a later stage on this machine closes it", file=sys.stderr, flush=True)


def _reopenable(client: Any, run_id: str | None, experiment_id: str, stage: str) -> str | None:
    """``run_id`` if it is a live run of ``stage`` in this experiment; else None, said (a store that was reset
    or another tracking server: the resumed execution gets a run of its own)."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # an outage or a refusal is said as such (server_errors_named), not taken for "no such run"
        run = None
    if run is None or run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active" \
            or run.data.tags.get("stage") != stage:
        print(f"{stage}: MLflow run {run_id}, which this execution resumes, is no {stage} run in the store: a new run "
              "records the rest", flush=True)
        return None
    print(f"{stage}: resuming, in MLflow run {run_id}", flush=True)
    return run_id


def _log_params(run: Any, params: dict[str, str]) -> None:
    """Log ``params``; a reopened run keeps the values it was started with (MLflow refuses to change a param)
    and records those the resumed execution changed (its speed settings) under tag ``resumed_with``."""
    import mlflow

    logged = run.data.params
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)}
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    if changed:
        mlflow.set_tag("resumed_with", json.dumps(changed, sort_keys=True)[:5000])


class BackgroundMetrics:
    """A long stage's metrics, posted to its MLflow run from a thread, so that the tracking server's outage
    neither stalls the stage (MLflow retries a call for minutes) nor ends it: days of training are not
    lost to a server restart. What the server does not take is said once per outage and counted; the
    stage keeps its own full record (pretraining's loss log), so nothing is lost but MLflow's copy."""

    def __init__(self, stage: str, run_id: str, capacity: int = 100_000, tracking_uri: str | None = None) -> None:
        import mlflow

        self.stage, self.run_id, self.client = stage, run_id, mlflow.MlflowClient(tracking_uri)
        self.queue: queue.Queue = queue.Queue(capacity)
        self.unlogged, self.failing = 0, False
        self.thread = threading.Thread(target=self._post, name=f"{stage}-metrics", daemon=True)
        self.thread.start()

    def log(self, values: dict[str, float], step: int = 0) -> None:
        try:
            self.queue.put_nowait((values, step, int(time.time() * 1000)))
        except queue.Full:
            self.unlogged += 1

    def _post(self) -> None:
        from mlflow.entities import Metric

        while (item := self.queue.get()) is not None:
            values, step, when = item
            try:
                self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), when, step) for k, v in values.items()])
            except Exception as exc:  # noqa: BLE001 - whatever the server or its client raised
                self.unlogged += 1
                if not self.failing:
                    print(f"{self.stage}: MLflow did not take the metrics of step {step} ({str(exc)[:300]}); the "
                          "stage goes on, and its own log keeps them", file=sys.stderr, flush=True)
                self.failing = True
            else:
                if self.failing:
                    print(f"{self.stage}: MLflow takes metrics again, from step {step}", file=sys.stderr, flush=True)
                self.failing = False

    def close(self, wait_s: float = 120.0) -> int:
        """Post what is queued, waiting at most ``wait_s`` for a server that does not answer; returns how
        many metric rows MLflow did not get."""
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=wait_s)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        missed = self.unlogged + (self.queue.qsize() if self.thread.is_alive() else 0)  # still queued, if stuck
        if missed:
            print(f"{self.stage}: {missed} metric rows did not reach MLflow run {self.run_id}", file=sys.stderr,
                  flush=True)
        return missed


@contextlib.contextmanager
def server_errors_named(uri: str) -> Iterator[None]:
    """A tracking server's 401/403, its silence or its failing on every one of MLflow's retries, as one line
    saying what to set, ask for or look at, instead of MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in REFUSALS:
            raise AccessError(_refusal(uri, exc)) from None
        problem = _server_problem(exc, uri)
        if problem:
            raise TrackingServerError(f"the MLflow server at {_shown(uri)} {problem}") from None
        raise


def _server_problem(exc: BaseException, uri: str) -> str | None:
    """What went wrong between MLflow and the server at ``uri``, if that is what ``exc`` is about: MLflow
    re-raises the request's error as the context of its own (``from`` it, for a timeout)."""
    import requests

    cause = exc.__cause__ if exc.__suppress_context__ else (exc.__cause__ or exc.__context__)
    request = getattr(cause, "request", None)
    if not isinstance(cause, requests.exceptions.RequestException) or request is None \
            or urlsplit(request.url).netloc != urlsplit(uri).netloc:
        return None  # another server's error (a registry or artifact store elsewhere), or not a request's
    if isinstance(cause, requests.exceptions.RetryError):
        reason = getattr(cause.args[0], "reason", cause) if cause.args else cause
        return (f"answered every one of its {_retries() + 1} tries with an error ({reason}): the server's log "
                "says why (its database, or its artifact store's credentials)")
    if isinstance(cause, requests.exceptions.SSLError):
        return None  # MLflow's own message says what to trust
    if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return (f"did not answer through {_retries()} retries over {_waits()} (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT): start it, or point "
                f"MLFLOW_TRACKING_URI at one that runs; the last error: {str(cause)[:300]}")
    return None


def _refusal(uri: str, exc: Any) -> str:
    from mlflow.utils.credentials import read_mlflow_creds

    user = read_mlflow_creds().username  # MLFLOW_TRACKING_USERNAME, or ~/.mlflow/credentials
    if not user:
        hint = "no credentials were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    elif exc.error_code == "UNAUTHENTICATED":
        hint = f"user {user!r} is unknown or its password (MLFLOW_TRACKING_PASSWORD) is wrong"
    else:
        hint = f"user {user!r} lacks the permission (models and experiments belong to whoever created them)"
    return (f"the MLflow server at {_shown(uri)} refused the request ({exc.error_code}): {hint}; "
            f"it said: {exc.message[:300]}")


def announce_if_silent(uri: str, stage: str) -> None:
    """Say at once when an HTTP tracking server does not answer: MLflow retries it for minutes in silence
    before the stage can fail (a scheduled run should wait out a restart, not fail on it). The probe goes as
    MLflow's own requests do (its credentials, client certificate, TLS settings), once, within 5 s."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0,  # any status is an answer
                     timeout=min(5, _request_timeout()), raise_on_status=False)
    except MlflowException as exc:
        if _server_problem(exc, uri):
            print(f"{stage}: the MLflow server at {_shown(uri)} does not answer; waiting for it through MLflow's "
                  f"{_retries()} retries ({_waits()})", file=sys.stderr, flush=True)


def _shown(uri: str) -> str:
    """``uri`` without a password in it (``http://user:secret@host`` is valid for MLflow, and logs are shared)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                            + (f":{parts.port}" if parts.port else "")))


def _waits() -> str:
    """The time MLflow's retries take at most: urllib3's sleeps (none before the 2nd try, then doubling from
    the backoff factor, each ≤ 120 s) plus each try's timeout, for a server that accepts and never answers."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR

    factor, retries = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(), _retries()
    sleeps = round(sum(min(factor * 2 ** k, 120) for k in range(1, retries)))
    return f"~{sleeps} s of waits, each try up to {_request_timeout()} s more"


def _retries() -> int:
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    return MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()


def _request_timeout() -> int:
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT

    return MLFLOW_HTTP_REQUEST_TIMEOUT.get()


def _flatten(obj: Any, prefix: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: str(obj)[:500]}
