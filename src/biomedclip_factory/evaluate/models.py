"""Resolve what to evaluate: a model dir (``local-dir:…`` or a path, a hub snapshot too) or a registry model (``models:/…``)."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import DataError, ParamsError
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


def _registry_encoder(spec: str) -> Encoder:
    """The registered model's encoder, downloaded into a directory that goes once it is in memory.

    Only what is wrong with the model itself (no such version or alias, artifacts missing, corrupt or not
    this pyfunc) is a DataError, on which the promotion gate refuses a candidate. A tracking server or
    artifact store that does not answer, or refuses us, is its own error: the run fails, to be retried,
    rather than concluding that a champion it could not reach is unusable."""
    import mlflow

    from ..errors import AccessError, SourceError, TrackingServerError
    from ..tracking import server_errors_named

    with tempfile.TemporaryDirectory(prefix="registry-model-") as tmp:
        try:
            with server_errors_named(mlflow.get_tracking_uri()):
                return mlflow.pyfunc.load_model(spec, dst_path=tmp).unwrap_python_model().encoder
        except (AccessError, TrackingServerError):
            raise
        except Exception as exc:  # noqa: BLE001 - sorted below: unpickling and weights raise anything
            problem = f"{type(exc).__name__}: {str(exc)[:500]}"
            if _artifact_store_unreachable(exc):
                raise SourceError(f"model {spec}: its artifact store did not answer or refused ({problem})") from exc
            raise DataError(f"model {spec}: cannot load from the registry ({problem})") from exc


def _artifact_store_unreachable(exc: BaseException | None) -> bool:
    """A connection, timeout or credentials error from the artifact store (S3 and kin through boto3, HTTP),
    anywhere in the chain; a missing key (404) is the model's own problem."""
    import requests

    unreachable: tuple[type[BaseException], ...] = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 client installed: no S3 artifact store either
        ClientError = None  # noqa: N806
    else:
        unreachable += (BotoCoreError,)
    while exc is not None:
        if isinstance(exc, unreachable):
            return True
        if ClientError is not None and isinstance(exc, ClientError):
            return exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "NoSuchBucket", "404")
        exc = exc.__cause__ or exc.__context__
    return False
