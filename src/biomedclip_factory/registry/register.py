"""Log a model dir to MLflow as a pyfunc, register a version, alias it, tag its lineage.

Registering is idempotent: a register killed after MLflow created its version, or run again on the
same build (``dvc repro -f -s register``, a commit that changes only the gate's params), gets that
version back rather than a twin of the same weights, which would double the registry's storage and
make the gate compare a model with its copy. Its evaluation is part of a version: the same weights
scored by a changed evaluation suite are a new version, carrying their new scores.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from ..digest import DigestCache, tree_digest
from .pyfunc import ARTIFACT_KEY, ClipPyfunc, ServeLimits, encode_image_file

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)]),
    params=ParamSchema([ParamSpec("candidate_labels", "string", default=[""], shape=(-1,))]),
)
BUILD_TAG = "build_sha256"  # version tag: what was registered, see build_digest
# Tags that describe the workspace when register ran, not the model (whose code and data the digest holds
# directly): dvc.lock gains register's own entry after a completed run, and a commit of params.yaml or
# stages/register.py moves the commit, so a rerun of the same build would otherwise never find its version.
NOT_THE_BUILD = ("dvc_lock_sha256", "git_commit", "git_dirty")


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    model_uri: str
    reused: bool = False


def build_digest(model_dir: Path, code_path: Path, tags: dict[str, str], pip_requirements: list[str],
                 limits: ServeLimits) -> str:
    """sha256 of everything a version is made of: the weights and config, the packaged code, the serving
    environment and limits, and the lineage tags but ``NOT_THE_BUILD`` (data hashes, training run, eval
    metrics)."""
    cache = DigestCache()
    parts = {"model": tree_digest(model_dir, cache, "register: model")["sha256"],
             "code": tree_digest(code_path, cache, "register: code")["sha256"],
             "requirements": pip_requirements, "limits": limits.as_config(),
             "tags": {k: v for k, v in sorted(tags.items()) if k not in NOT_THE_BUILD}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def registered_build(client: mlflow.MlflowClient, name: str, build: str) -> str | None:
    """The newest version of ``name`` registered from ``build`` (None when there is none). The filter names
    the hex digest only: a model name may hold a quote, which no filter string can."""
    found = [int(v.version) for v in client.search_model_versions(f"tags.{BUILD_TAG} = '{build}'")
             if v.name == name and v.status == "READY"]
    return str(max(found)) if found else None


def register_model(model_dir: Path, name: str, alias: str, example_image: Path, tags: dict[str, str],
                   pip_requirements: list[str], code_path: Path, limits: ServeLimits = ServeLimits()) -> Registered:
    """Log ``model_dir`` in the active run, register it under ``name`` and point ``alias`` at it; a build
    registered before gets its version back (``reused``), with ``alias`` pointed at it again.

    ``limits`` travel with the model (its ``model_config``): every server of it enforces them."""
    client = mlflow.MlflowClient()
    build = build_digest(model_dir, code_path, tags, pip_requirements, limits)
    version = registered_build(client, name, build)
    reused = version is not None
    if reused:
        run_id = client.get_model_version(name, version).run_id
        print(f"register: this build is already version {version} of '{name}' (tag {BUILD_TAG}={build[:12]}…): "
              "reusing it", flush=True)
        for key in NOT_THE_BUILD:  # as of this run, beside the lineage_run_id that names it
            if key in tags:
                client.set_model_version_tag(name, version, key, tags[key])
    else:
        example = pd.DataFrame({"image": [encode_image_file(example_image)], "text": ["a figure of a cell"]})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ClipPyfunc(), artifacts={ARTIFACT_KEY: str(model_dir)},
            signature=SIGNATURE, input_example=example, pip_requirements=pip_requirements,
            code_paths=[str(code_path)], model_config=limits.as_config(),
        )
        # The lineage tags come with the version, in its one create request: no version is ever seen
        # without them, and an authenticated server checks one password, not two per tag.
        version = str(mlflow.register_model(info.model_uri, name, tags={**tags, BUILD_TAG: build}).version)
        run_id = info.run_id
    client.set_registered_model_alias(name, alias, version)
    return Registered(name=name, version=version, run_id=run_id, model_uri=f"models:/{name}/{version}",
                      reused=reused)
