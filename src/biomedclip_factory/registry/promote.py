"""The promotion gate: a new version becomes ``champion`` only if it beats the current one by a margin.

A version whose evaluation failed, or lacks the gate metric, is never promoted. Scores are compared
only when measured alike: a retrieval metric depends on its gallery, which grows with every scrape of
PMC, and a zero-shot, probe or VQA score on its set's data, settings and scoring rule, so a champion
scored otherwise is scored again as the candidate was (``rescore``).
The decision and its reason are returned so the caller can log them (MLflow tags, the stage's output).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from mlflow import MlflowClient

from ..errors import DataError, ParamsError
from ..evaluate.conditions import SCORING
from ..params import Section

CHAMPION = "champion"
DEPOSED = "deposed"  # the ``promotion`` tag of a version that was champion and was replaced


def new_version_alias(register: Section) -> str:
    """``register.alias``, the alias every new version gets: never champion, which only the gate moves."""
    alias = register.get("alias", str)
    if alias == CHAMPION:
        raise ParamsError(f"params: '{register.path}.alias' must not be '{CHAMPION}': every new version gets it, "
                          "which would promote it past the gate; only the gate moves champion (use e.g. challenger)")
    return alias


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate_score: float | None
    champion_version: str | None
    champion_score: float | None
    blocked: bool = False  # refused until a person repairs the registry, not on the scores: worth an alert
    deposed: bool = False  # it was champion once, and is no longer: not promoted again by the gate


def json_tag(version_tags: dict[str, str], key: str) -> dict:
    """A version's JSON object tag ``key`` ({} when absent or unreadable)."""
    try:
        value = json.loads(version_tags.get(key, "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def eval_metrics(version_tags: dict[str, str]) -> dict:
    """A version's ``eval_metrics`` tag ({} when absent or unreadable)."""
    return json_tag(version_tags, "eval_metrics")


def metric_of(metrics: dict, metric: str) -> float | None:
    """The gate metric (None when absent or not a number)."""
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) and value == value else None


SHARD_DIGESTS = "shard_splits_sha256"  # version tag: {split: sha256 of its shards}, the gallery's identity
MEASURED_AS = "eval_measured_as"  # version tag: {"zeroshot.<set>": how it was scored}, see evaluate/conditions.py
RESCORED = "gate_rescored"  # champion's tag: {metric: {"measured": ..., "score": ...}}, its last score measured anew


@dataclass(frozen=True)
class Measured:
    """How a version's score on the gate metric was measured; two scores are compared only when measured
    alike. ``here`` and ``elsewhere`` say it in the decision's reason."""
    identity: tuple
    here: str  # "on this gallery of 1,000 pairs"
    elsewhere: str  # "on another gallery (900 pairs)", said of the champion's
    retrieval: bool

    def same_as(self, other: Measured | None) -> bool:
        if other is None:
            return False
        if not self.retrieval:  # a set's data digest, settings, precision and scoring rule: all recorded, all equal
            return self.identity[0] is not None and self.identity == other.identity
        # a retrieval gallery: same size, ranking rule and precision, and the same content where both recorded it
        ours, theirs = self.identity, other.identity
        return ours[0] == theirs[0] and ours[2:] == theirs[2:] and (ours[1] is None or theirs[1] is None
                                                                     or ours[1] == theirs[1])


def measured(tags: dict[str, str], metric: str) -> Measured | None:
    """How ``metric`` was measured on a version (None for a metric that is not a score of a split or set).

    A retrieval score: its split's size and content digest, the ranking rule (``retrieval.PROTOCOL``) and
    the towers' precision. Scraping replaces article versions, so equal sizes alone do not make equal
    galleries; a score ranked by an earlier rule, or in another precision, is not comparable either. A
    zero-shot, probe or VQA score: its ``eval_measured_as`` entry, a digest of the set's data, its
    settings, the precision and the scoring rule, as the evaluate stage recorded it."""
    parts = metric.split(".")
    if len(parts) < 3:
        return None
    metrics = eval_metrics(tags)
    if parts[0] == "retrieval":
        digests = json_tag(tags, SHARD_DIGESTS)
        size = metrics.get(f"retrieval.{parts[1]}.gallery_size")
        return Measured((size, digests.get(parts[1]), metrics.get(f"retrieval.{parts[1]}.protocol"),
                         metrics.get(f"retrieval.{parts[1]}.precision_bits")),
                        f"on this gallery of {_pairs(size)}", f"on another gallery ({_pairs(size)})", True)
    if parts[0] in SCORING:
        return Measured((json_tag(tags, MEASURED_AS).get(f"{parts[0]}.{parts[1]}"),),
                        f"on this run's '{parts[1]}' data and settings", "on other data or settings (or unrecorded)",
                        False)
    return None


def decide(client: MlflowClient, name: str, version: str, metric: str, margin: float,
           rescore: Callable[[str], float | None] | None = None) -> Decision:
    """Compare ``version`` with the current champion of ``name`` on ``metric`` (higher is better).

    ``rescore(champion_version)`` scores the champion on the candidate's data and settings when its own
    score was measured otherwise (``measured``); a DataError from it (a broken champion) refuses the candidate, with the
    reason. Errors reading the registry, or reaching the champion, propagate: an outage is not "no champion"
    nor a broken one.
    """
    tags = client.get_model_version(name, version).tags
    candidate = metric_of(eval_metrics(tags), metric)
    champion_version = client.get_registered_model(name).aliases.get(CHAMPION)
    if champion_version == version:  # a rerun of the register that promoted it, whatever the gate metric now
        return Decision(True, f"version {version} is already champion", candidate, version, candidate)
    if champion_version is not None and tags.get("promotion") in (CHAMPION, DEPOSED):
        # register runs on every repro: re-gating a version a person rolled back would undo the rollback
        return Decision(False, f"version {version} was champion and v{champion_version} has replaced it (a rollback, "
                               "or a later promotion): the gate never brings a version back; move the "
                               f"'{CHAMPION}' alias to it by hand to", candidate, champion_version, None, deposed=True)
    if candidate is None:
        return Decision(False, f"evaluation missing or failed: no '{metric}' for version {version}", None, None, None)
    if champion_version is None:
        return Decision(True, f"no champion yet; {metric}={candidate:.4f}", candidate, None, None)
    champion_tags = client.get_model_version(name, champion_version).tags
    best, measured_here = metric_of(eval_metrics(champion_tags), metric), ""
    ours, theirs = measured(tags, metric), measured(champion_tags, metric)
    if ours is not None and (best is None or not ours.same_as(theirs)):
        if rescore is None:
            scored = theirs.elsewhere if best is not None and theirs else f"without '{metric}'"
            return Decision(False, f"champion v{champion_version} was scored {scored}, this version "
                                   f"{ours.here}: not comparable", candidate, champion_version, None)
        try:
            best = _rescored(client, name, champion_version, champion_tags, metric, ours, rescore)
        except DataError as exc:  # the champion itself is broken (an unreachable one raises on: retried later)
            return Decision(False, f"champion v{champion_version} could not be scored {ours.here}: {exc}; "
                                   f"until it is repaired, or the '{CHAMPION}' alias moved or deleted, no version "
                                   "scored anew is promoted", candidate, champion_version, None,
                            blocked=True)
        if best is None:
            return Decision(False, f"champion v{champion_version} got no '{metric}' {ours.here}",
                            candidate, champion_version, None, blocked=True)
        measured_here = f" (re-scored {ours.here})"
    if best is None:  # a gate metric changed in params, or a champion set by hand: "beats" cannot be decided
        return Decision(False, f"champion v{champion_version} has no '{metric}' to compare with (another gate metric "
                               f"when it was promoted, or an alias set by hand); until it is scored on '{metric}', "
                               f"or the '{CHAMPION}' alias moved or deleted, no version is promoted", candidate,
                        champion_version, None, blocked=True)
    if candidate > best + margin:
        return Decision(True, f"{metric} {candidate:.4f} > champion v{champion_version} {best:.4f}{measured_here} "
                              f"+ margin {margin}", candidate, champion_version, best)
    return Decision(False, f"{metric} {candidate:.4f} ≤ champion v{champion_version} {best:.4f}{measured_here} "
                           f"+ margin {margin}", candidate, champion_version, best)


def _rescored(client: MlflowClient, name: str, champion: str, champion_tags: dict[str, str], metric: str,
              ours: Measured, rescore: Callable[[str], float | None]) -> float | None:
    """The champion's score measured as ours was: its last such score, kept on it as a tag, or a new one.

    register runs on every ``dvc repro``, and a refused candidate is gated again each time: without this a
    night with nothing new would embed the whole gallery (or a probe set's 262k images) again for the same
    number. Only a fully recorded measurement is kept: one with a part unrecorded may differ unseen."""
    key = json.dumps(list(ours.identity))
    kept = json_tag(champion_tags, RESCORED).get(metric)
    if isinstance(kept, dict) and kept.get("measured") == key and isinstance(kept.get("score"), (int, float)):
        return float(kept["score"])
    score = rescore(champion)
    if score is not None and None not in ours.identity:
        client.set_model_version_tag(name, champion, RESCORED, json.dumps({metric: {"measured": key, "score": score}}))
    return score


def _pairs(size: float | None) -> str:
    """A gallery size as people write it (the tags hold floats: "1,000 pairs", not "1000.0")."""
    return f"{int(size):,} pairs" if isinstance(size, (int, float)) else "an unrecorded number of pairs"


def gate(client: MlflowClient, name: str, version: str, metric: str, margin: float,
         rescore: Callable[[str], float | None] | None = None, tries: int = 3) -> Decision:
    """``decide`` and ``apply``, the decision made again if another run moved champion meanwhile.

    MLflow has no compare-and-set on an alias, and scoring a champion again takes minutes: two runs (two
    workspaces, a developer's ``dvc repro`` against the team's registry) could each beat the old champion
    and the later one move the alias over a better model. The alias is read again just before it moves;
    if it changed, the new champion is the one to beat. That leaves a window of two requests, not minutes."""
    for _ in range(tries):
        decision = decide(client, name, version, metric, margin, rescore)
        if decision.promote and decision.champion_version == version:
            if client.get_model_version(name, version).tags.get("promotion") != CHAMPION:
                apply(client, name, version, decision)  # the run that promoted it died before saying so
            return decision  # else its tags keep the reason it was promoted for
        now = client.get_registered_model(name).aliases.get(CHAMPION) if decision.promote else None
        if not decision.promote or now == decision.champion_version:
            apply(client, name, version, decision)
            return decision
        print(f"register: champion moved to v{now} while this run decided against v{decision.champion_version}: "
              "deciding again", flush=True)
    reason = (f"champion of '{name}' kept moving during {tries} decisions: another run is promoting at the same "
              "time; run register again")
    _record(client, name, version, "undecided", reason)  # not left looking never gated
    raise DataError(f"register: {reason}")


def apply(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Move the champion alias when the decision says so, then record the decision on the version: a run
    killed between the calls leaves a champion without its reason, never a version tagged champion that is not."""
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    _record(client, name, version, CHAMPION if decision.promote else DEPOSED if decision.deposed else "rejected",
            decision.reason)


def _record(client: MlflowClient, name: str, version: str, outcome: str, reason: str) -> None:
    """The gate's outcome and reason as the version's ``promotion`` and ``promotion_reason`` tags."""
    client.set_model_version_tag(name, version, "promotion", outcome)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
