"""MLflow wiring shared by the stages: a local SQLite store by default, one run per stage."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import AccessError

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

    with refusals_named(tracking_uri(project_root)):
        experiment_id = configure(project_root)
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags={"stage": stage}) as run:
            mlflow.log_params(_flatten(params, stage))
            yield run


@contextlib.contextmanager
def refusals_named(uri: str) -> Iterator[None]:
    """A server's 401/403 as one line saying what to set or ask for, instead of MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in REFUSALS:
            raise
        from mlflow.utils.credentials import read_mlflow_creds

        user = read_mlflow_creds().username  # MLFLOW_TRACKING_USERNAME, or ~/.mlflow/credentials
        if not user:
            hint = "no credentials were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        elif exc.error_code == "UNAUTHENTICATED":
            hint = f"user {user!r} is unknown or its password (MLFLOW_TRACKING_PASSWORD) is wrong"
        else:
            hint = f"user {user!r} lacks the permission (models and experiments belong to whoever created them)"
        raise AccessError(f"the MLflow server at {uri} refused the request ({exc.error_code}): {hint}; "
                          f"it said: {exc.message[:300]}") from None


def _flatten(obj: Any, prefix: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: str(obj)[:500]}
