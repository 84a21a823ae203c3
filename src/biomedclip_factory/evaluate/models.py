"""Resolve what to evaluate: a model dir (``local-dir:…`` or a path) or a registry model (``models:/…``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .embed import Encoder


def load_encoder(spec: str, project_root: Path) -> Encoder:
    """An ``Encoder`` for ``spec``; a missing model or alias is a DataError naming it."""
    if spec.startswith("models:/"):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.pyfunc.load_model(spec).unwrap_python_model().encoder
        except (MlflowException, OSError) as exc:
            raise DataError(f"model {spec}: cannot load from the registry ({exc})") from exc
    path = project_root / spec.removeprefix("local-dir:")
    if not (path / "open_clip_config.json").is_file():
        raise DataError(f"model {spec}: no open_clip_config.json in {path}")
    try:
        return Encoder.load(path)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # e.g. no text-tower config.json beside it
        raise DataError(f"model {spec}: cannot load {path}: {exc}") from exc
