"""How a zero-shot, probe or VQA score was measured, as one digest the registry keeps per version.

The promotion gate compares a candidate's score with the champion's only when both were measured
alike; otherwise it scores the champion again as the candidate was. A retrieval score carries its
gallery (size, shard digest, ranking rule, precision) among its metrics; a set's score carries this
digest instead: the set's data (the content digests the ``inputs`` stage recorded, not its paths),
its settings as parsed (class names, templates, metric, fractions, seeds, the VQA head's recipe), the
towers' precision and the kind's scoring rule. Re-templated prompts, a re-downloaded set with other
images, an fp32 evaluation after a bf16 one, or a change to how a kind is scored each make it differ.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from .tasks import ProbeTask, Suite, VqaTask, ZeroShotTask, task_paths

# Bump a kind's rule when its scoring changes what it reports for the same embeddings: a champion
# scored under an earlier rule is then scored again. linear_probe 2: C over 1e-6..1e6 (was 1e-4..1e4).
SCORING = {"zeroshot": 1, "linear_probe": 2, "vqa": 1}


def measured_as(kind: str, task: ZeroShotTask | ProbeTask | VqaTask, inputs: Mapping[str, Any],
                precision: str) -> str | None:
    """The digest of how ``task`` is scored; ``inputs`` is the ``inputs`` stage's record for evaluate. None
    when that record lacks the set's data (evaluate run outside DVC, a set not there): a score of unknown
    data is never taken as measured alike."""
    data = {key: (inputs.get(f"evaluate.{key}") or {}).get("sha256") for key in sorted(task_paths(kind, task))}
    if not all(data.values()):
        return None
    recipe = {"settings": dataclasses.asdict(task), "data": data, "precision": precision, "scoring": SCORING[kind]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=_by_content).encode()).hexdigest()[:16]


def _by_content(value: Any) -> None:
    """A path stands for its data, which ``data`` holds by digest: where it lies is not how it was scored."""
    if isinstance(value, PurePath):
        return None
    raise TypeError(f"{type(value).__name__} in a set's settings has no place in its digest")


def stamp(report: dict, suite: Suite, inputs: Mapping[str, Any]) -> None:
    """Each scored set of each model in ``report`` gets its ``measured_as``."""
    for kind, task in suite.tasks():
        digest = measured_as(kind, task, inputs, suite.precision)
        for result in report.values() if digest else ():
            scored = result.get(kind, {}).get(task.name)
            if isinstance(scored, dict) and "error" not in scored:
                scored["measured_as"] = digest


def measured_tag(report: dict) -> dict[str, str]:
    """``{"<kind>.<set>": measured_as}`` of one model's report, as the registry keeps it."""
    return {f"{kind}.{name}": result["measured_as"] for kind in SCORING for name, result in report.get(kind, {}).items()
            if isinstance(result, dict) and "measured_as" in result}
