"""Resolve what to evaluate: a model dir (``local-dir:…`` or a path, a hub snapshot too) or a registry model (``models:/…``)."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import AccessError, DataError, ParamsError, SourceError, TrackingServerError
from ..model.snapshot import convert_snapshot, is_snapshot
from .embed import Encoder, default_device


def load_encoder(spec: str, project_root: Path, text_dir: str | None = None) -> Encoder:
    """An ``Encoder`` for ``spec``; a missing model or alias is a DataError naming it.

    A hub snapshot (the released BiomedCLIP's layout) is converted into a throw-away model dir with
    ``text_dir``, the local copy of the text tower it names, and loaded from there.
    """
    if spec.startswith("models:/"):
        encoder = _registry_encoder(spec)
        device = default_device()  # the pyfunc loads on the host for serving; scored here like ours
        return replace(encoder, model=encoder.model.to(device), device=device)
    path = project_root / spec.removeprefix("local-dir:")
    if not (path / "open_clip_config.json").is_file():
        raise DataError(f"model {spec}: no open_clip_config.json in {path}")
    try:
        if is_snapshot(path):
            with tempfile.TemporaryDirectory() as tmp:
                convert_snapshot(path, project_root / text_dir if text_dir else None, Path(tmp), "evaluate.models")
                return Encoder.load(Path(tmp))  # held in memory: the dir can go
        return Encoder.load(path)
    except ParamsError as exc:
        raise DataError(f"model {spec}: {exc}") from exc
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # e.g. no text-tower config.json beside it
        raise DataError(f"model {spec}: cannot load {path}: {exc}") from exc


# What the registry answers for a model, version or alias it does not hold (an alias: "not found", as an
# invalid parameter), or a URI it cannot read: the spec's problem, not the server's.
NOT_THERE = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _registry_encoder(spec: str) -> Encoder:
    """The registered model's encoder, downloaded into a directory that goes once it is in memory.

    Three steps, each failing its own way. A version or alias that does not exist, and artifacts that are
    there but do not load (corrupt weights, not this pyfunc), are the model's own problem: a DataError, on
    which the promotion gate refuses a candidate. A tracking server or artifact store that does not answer,
    refuses us, or fails the download is not: the run fails, to be retried, rather than concluding that a
    champion it could not fetch is unusable (MLflow reports a failed file of a download as one new error
    without its cause, so only the step tells them apart)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..tracking import server_errors_named

    with tempfile.TemporaryDirectory(prefix="registry-model-") as tmp:
        try:
            with server_errors_named(mlflow.get_tracking_uri()):
                local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=tmp)
        except MlflowException as exc:
            if exc.error_code in NOT_THERE:
                raise DataError(f"model {spec}: not in the registry ({str(exc)[:300]})") from exc
            raise SourceError(f"model {spec}: cannot download it ({_said(exc)})") from exc
        except (AccessError, TrackingServerError):
            raise
        except Exception as exc:  # noqa: BLE001 - the artifact store's client raises its own kinds
            raise SourceError(f"model {spec}: cannot download it ({_said(exc)})") from exc
        try:
            return mlflow.pyfunc.load_model(local).unwrap_python_model().encoder
        except Exception as exc:  # noqa: BLE001 - unpickling and weights raise anything
            raise DataError(f"model {spec}: its artifacts do not load ({_said(exc)})") from exc


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:500]}"
