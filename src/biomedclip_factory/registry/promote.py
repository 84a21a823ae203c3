"""The promotion gate: a new version becomes ``champion`` only if it beats the current one by a margin.

A version whose evaluation failed, or lacks the gate metric, is never promoted. The decision and
its reason are returned so the caller can log them (MLflow tags on the version, the stage's output).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate_score: float | None
    champion_version: str | None
    champion_score: float | None


def metric_of(version_tags: dict[str, str], metric: str) -> float | None:
    """The gate metric from a version's ``eval_metrics`` tag (None when absent or not a number)."""
    try:
        value = json.loads(version_tags.get("eval_metrics", "{}")).get(metric)
    except json.JSONDecodeError:
        return None
    return float(value) if isinstance(value, (int, float)) and value == value else None


def decide(client: MlflowClient, name: str, version: str, metric: str, margin: float) -> Decision:
    """Compare ``version`` with the current champion of ``name`` on ``metric`` (higher is better)."""
    candidate = metric_of(client.get_model_version(name, version).tags, metric)
    if candidate is None:
        return Decision(False, f"evaluation missing or failed: no '{metric}' for version {version}", None, None, None)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return Decision(True, f"no champion yet; {metric}={candidate:.4f}", candidate, None, None)
    best = metric_of(champion.tags, metric)
    if best is None:
        return Decision(True, f"champion v{champion.version} has no '{metric}'", candidate, champion.version, None)
    if candidate >= best + margin:
        return Decision(True, f"{metric} {candidate:.4f} ≥ champion v{champion.version} {best:.4f} + margin {margin}",
                        candidate, champion.version, best)
    return Decision(False, f"{metric} {candidate:.4f} < champion v{champion.version} {best:.4f} + margin {margin}",
                    candidate, champion.version, best)


def apply(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Record the decision on the version and move the champion alias when it says so."""
    client.set_model_version_tag(name, version, "promotion", "champion" if decision.promote else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
