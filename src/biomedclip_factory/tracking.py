"""MLflow wiring shared by the stages: a local SQLite store by default, one run per stage."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from .errors import AccessError, TrackingServerError

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
def stage_run(stage: str, project_root: Path, params: dict[str, Any]) -> Iterator[Any]:
    """An MLflow run for one stage execution, with its params section flattened."""
    import mlflow

    uri = tracking_uri(project_root)
    with server_errors_named(uri):
        if uri.startswith(("http://", "https://")):
            announce_if_silent(uri, stage)
        experiment_id = configure(project_root)
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags={"stage": stage}) as run:
            mlflow.log_params(_flatten(params, stage))
            yield run


@contextlib.contextmanager
def server_errors_named(uri: str) -> Iterator[None]:
    """A server's 401/403, or its silence through MLflow's retries, as one line saying what to set or ask
    for, instead of MLflow's traceback."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        cause = exc.__cause__ or exc.__context__
        if exc.error_code in REFUSALS:
            raise AccessError(_refusal(uri, exc)) from None
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                              requests.exceptions.RetryError)) \
                and not isinstance(cause, requests.exceptions.SSLError):
            raise TrackingServerError(
                f"the MLflow server at {uri} did not answer through {_retries()} retries over "
                f"~{_retry_seconds()} s of waits (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR; "
                f"each try up to MLFLOW_HTTP_REQUEST_TIMEOUT={_request_timeout()} s): "
                f"start it, or point MLFLOW_TRACKING_URI at one that runs; the last error: {str(cause)[:300]}") from None
        raise


def _refusal(uri: str, exc: Any) -> str:
    from mlflow.utils.credentials import read_mlflow_creds

    user = read_mlflow_creds().username  # MLFLOW_TRACKING_USERNAME, or ~/.mlflow/credentials
    if not user:
        hint = "no credentials were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    elif exc.error_code == "UNAUTHENTICATED":
        hint = f"user {user!r} is unknown or its password (MLFLOW_TRACKING_PASSWORD) is wrong"
    else:
        hint = f"user {user!r} lacks the permission (models and experiments belong to whoever created them)"
    return f"the MLflow server at {uri} refused the request ({exc.error_code}): {hint}; it said: {exc.message[:300]}"


def announce_if_silent(uri: str, stage: str) -> None:
    """Say at once when the server does not answer: MLflow retries it for minutes in silence (~4 by default)
    before the stage can fail, and a scheduled run should wait out a restart, not fail on it."""
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=min(5, _request_timeout()))
    except requests.exceptions.SSLError:
        return  # MLflow may be told to trust this server (MLFLOW_TRACKING_INSECURE_TLS, a CA bundle)
    except requests.exceptions.RequestException as exc:
        print(f"{stage}: the MLflow server at {uri} does not answer ({type(exc).__name__}); waiting for it through "
              f"MLflow's {_retries()} retries (~{_retry_seconds()} s)", file=sys.stderr, flush=True)


def _retries() -> int:
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    return MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()


def _retry_seconds() -> int:
    """The sleeps urllib3's Retry takes between MLflow's tries: none before the 2nd, then doubling, each ≤ 120 s."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR

    factor = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    return round(sum(min(factor * 2 ** k, 120) for k in range(1, _retries())))


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
