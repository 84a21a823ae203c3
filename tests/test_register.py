"""Registering on a real SQLite-backed MLflow: a build is one version, however often register runs."""
from __future__ import annotations

import mlflow
import pytest
from PIL import Image

from biomedclip_factory.registry.lineage import serving_requirements
from biomedclip_factory.registry.pyfunc import ServeLimits
from biomedclip_factory.registry.register import BUILD_TAG, register_model

from .conftest import REPO, tiny_model_dir

CODE = REPO / "src" / "biomedclip_factory"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("register"))


def test_a_register_killed_after_its_version_was_created_gets_that_version_back(model_dir, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        _register_again_and_again(mlflow.MlflowClient(), model_dir, tmp_path)
    finally:
        mlflow.set_tracking_uri(None)


def _register_again_and_again(registry: mlflow.MlflowClient, model_dir, tmp_path) -> None:
    experiment = mlflow.create_experiment("r", artifact_location=(tmp_path / "a").as_uri())
    example = tmp_path / "example.png"
    Image.new("RGB", (32, 32), (90, 40, 20)).save(example)
    requirements = serving_requirements(REPO / "constraints.txt")
    tags = {"git_commit": "abc", "eval_metrics": '{"retrieval.test.image_to_text.R_at_1": 0.5}',
            "dvc_lock_sha256": "1" * 64}

    def register(tags: dict, limits: ServeLimits = ServeLimits()):
        with mlflow.start_run(experiment_id=experiment):
            return register_model(model_dir, "m", "challenger", example, tags, requirements, CODE, limits)

    first = register(tags)
    registry.delete_registered_model_alias("m", "challenger")  # killed before its alias was set
    # Meanwhile dvc.lock gained register's entry, and params.yaml's margin was committed: the same build.
    again = register({**tags, "dvc_lock_sha256": "2" * 64, "git_commit": "def"})
    assert (again.version, again.reused, again.run_id) == (first.version, True, first.run_id)
    assert registry.get_model_version_by_alias("m", "challenger").version == int(first.version)
    assert len(registry.search_model_versions("name = 'm'")) == 1
    tags_now = registry.get_model_version("m", first.version).tags
    assert tags_now[BUILD_TAG] and (tags_now["git_commit"], tags_now["dvc_lock_sha256"]) == ("def", "2" * 64)

    # Another build is another version: other eval metrics, other serving limits, other weights.
    evaluated = register({**tags, "eval_metrics": '{"retrieval.test.image_to_text.R_at_1": 0.6}'})
    limited = register(tags, ServeLimits(max_rows=7))
    (model_dir / "open_clip_config.json").write_text((model_dir / "open_clip_config.json").read_text() + "\n")
    rebuilt = register(tags)
    versions = [first.version, evaluated.version, limited.version, rebuilt.version]
    assert len(set(versions)) == 4 and not any(r.reused for r in (evaluated, limited, rebuilt))
    assert registry.get_model_version_by_alias("m", "challenger").version == int(rebuilt.version)
