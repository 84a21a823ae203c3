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
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            encoder = mlflow.pyfunc.load_model(spec).unwrap_python_model().encoder
        except (MlflowException, OSError) as exc:
            raise DataError(f"model {spec}: cannot load from the registry ({exc})") from exc
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
