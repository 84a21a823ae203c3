"""The promotion gate on a real SQLite-backed MLflow registry."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from biomedclip_factory.registry import promote

METRIC = "retrieval.test.image_to_text.R_at_1"


@pytest.fixture()
def client(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    c.create_registered_model("m")
    return c


def _version(client, tmp_path, metrics: dict | None) -> str:
    v = client.create_model_version("m", source=str(tmp_path)).version
    if metrics is not None:
        client.set_model_version_tag("m", v, "eval_metrics", json.dumps(metrics))
    return v


def test_gate_sequence(client, tmp_path):
    v1 = _version(client, tmp_path, {METRIC: 0.50})
    d = promote.decide(client, "m", v1, METRIC, margin=0.01)
    assert d.promote and "no champion yet" in d.reason
    promote.apply(client, "m", v1, d)
    assert client.get_model_version_by_alias("m", "champion").version == v1

    v2 = _version(client, tmp_path, {METRIC: 0.505})  # better, but not by the margin
    d = promote.decide(client, "m", v2, METRIC, margin=0.01)
    assert not d.promote and d.champion_version == v1 and d.champion_score == 0.50
    promote.apply(client, "m", v2, d)
    assert client.get_model_version("m", v2).tags["promotion"] == "rejected"

    v3 = _version(client, tmp_path, {METRIC: 0.60})
    promote.apply(client, "m", v3, promote.decide(client, "m", v3, METRIC, margin=0.01))
    assert client.get_model_version_by_alias("m", "champion").version == v3


def test_missing_or_failed_evaluation_is_never_promoted(client, tmp_path):
    for metrics in (None, {"other": 1.0}, {METRIC: float("nan")}):
        v = _version(client, tmp_path, metrics)
        d = promote.decide(client, "m", v, METRIC, margin=0.0)
        assert not d.promote and "evaluation missing or failed" in d.reason
