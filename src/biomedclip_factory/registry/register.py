"""Log a model dir to MLflow as a pyfunc, register a version, alias it, tag its lineage."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from .pyfunc import ARTIFACT_KEY, ClipPyfunc, ServeLimits, encode_image_file

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)]),
    params=ParamSchema([ParamSpec("candidate_labels", "string", default=[""], shape=(-1,))]),
)


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    model_uri: str


def register_model(model_dir: Path, name: str, alias: str, example_image: Path, tags: dict[str, str],
                   pip_requirements: list[str], code_path: Path, limits: ServeLimits = ServeLimits()) -> Registered:
    """Log ``model_dir`` in the active run, register it under ``name`` and point ``alias`` at it.

    ``limits`` travel with the model (its ``model_config``): every server of it enforces them."""
    example = pd.DataFrame({"image": [encode_image_file(example_image)], "text": ["a figure of a cell"]})
    info = mlflow.pyfunc.log_model(
        name="model", python_model=ClipPyfunc(), artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=SIGNATURE, input_example=example, pip_requirements=pip_requirements,
        code_paths=[str(code_path)], model_config=limits.as_config(),
    )
    # The lineage tags come with the version, in its one create request: no version is ever seen
    # without them, and an authenticated server checks one password, not two per tag.
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return Registered(name=name, version=version, run_id=info.run_id, model_uri=f"models:/{name}/{version}")
