"""The promotion gate on a real SQLite-backed MLflow registry."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.params import Section
from biomedclip_factory.registry import promote
from biomedclip_factory.registry.lineage import lineage_tags

METRIC = "retrieval.test.image_to_text.R_at_1"


@pytest.fixture()
def client(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    c.create_registered_model("m")
    return c


def _version(client, tmp_path, metrics: dict | None, test_split: str | None = None) -> str:
    v = client.create_model_version("m", source=str(tmp_path)).version
    if metrics is not None:
        client.set_model_version_tag("m", v, "eval_metrics", json.dumps(metrics))
    if test_split is not None:
        client.set_model_version_tag("m", v, promote.SHARD_DIGESTS, json.dumps({"test": test_split}))
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


def test_a_tie_keeps_the_champion(client, tmp_path):
    v1 = _version(client, tmp_path, {METRIC: 0.5})
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))
    v2 = _version(client, tmp_path, {METRIC: 0.5})
    d = promote.decide(client, "m", v2, METRIC, margin=0.0)
    assert not d.promote and d.champion_score == 0.5


def test_the_paper_suites_metrics_survive_the_tag_and_reach_the_gate(client, tmp_path):
    """~5 kB of eval metrics (5 zero-shot sets, 3 probes at 3 fractions, VQA): one cut would lose the gate."""
    metrics = {f"zeroshot.set_{i}.metric_{j}": 0.123456789 for i in range(20) for j in range(10)} | {METRIC: 0.7}
    tags = lineage_tags(tmp_path, None, {}, metrics)
    assert len(tags["eval_metrics"]) > 8000
    v = client.create_model_version("m", source=str(tmp_path), tags=tags).version
    d = promote.decide(client, "m", v, METRIC, margin=0.0)
    assert d.promote and d.candidate_score == 0.7
    with pytest.raises(ValueError, match="'eval_metrics' tag is"):
        lineage_tags(tmp_path, None, {}, {f"k{i}": 0.123456789 for i in range(10_000)})


class _RegistryDown(MlflowClient):
    """A registry that answers for versions but fails reading the model's aliases (a 5xx, a dropped link)."""

    def get_registered_model(self, name):
        raise MlflowException("registry unavailable", INTERNAL_ERROR)


def test_a_registry_error_is_not_taken_for_no_champion(client, tmp_path):
    v1 = _version(client, tmp_path, {METRIC: 0.9})
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))
    v2 = _version(client, tmp_path, {METRIC: 0.1})
    with pytest.raises(MlflowException, match="unavailable"):
        promote.decide(_RegistryDown(client.tracking_uri), "m", v2, METRIC, margin=0.0)
    assert client.get_model_version_by_alias("m", "champion").version == v1


def test_a_champion_scored_on_another_gallery_is_scored_again_on_this_one(client, tmp_path):
    gallery = "retrieval.test.gallery_size"
    v1 = _version(client, tmp_path, {METRIC: 0.60, gallery: 1000})
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))
    asked = []

    def rescore(version):
        asked.append(version)
        return 0.40  # the same champion on the larger gallery: harder, so lower

    v2 = _version(client, tmp_path, {METRIC: 0.50, gallery: 1200})  # worse than the old tag, better here
    d = promote.decide(client, "m", v2, METRIC, margin=0.0, rescore=rescore)
    assert asked == [v1] and d.promote and d.champion_score == 0.40
    assert "re-scored on this gallery of 1,200 pairs" in d.reason, d.reason
    promote.apply(client, "m", v2, d)
    v3 = _version(client, tmp_path, {METRIC: 0.55, gallery: 1000})
    d = promote.decide(client, "m", v3, METRIC, margin=0.0)  # no rescorer: refused, not guessed
    assert not d.promote and "another gallery (1,200 pairs), this version on this gallery of 1,000 pairs: not comparable" in d.reason
    asked.clear()
    v4 = _version(client, tmp_path, {METRIC: 0.65, gallery: 1200})  # same gallery: the tag is the score
    assert promote.decide(client, "m", v4, METRIC, margin=0.0, rescore=rescore).promote and asked == []


def test_a_gallery_of_the_same_size_but_other_content_is_another_gallery(client, tmp_path):
    """Scraping replaces superseded article versions: the count can stay while the pairs change."""
    gallery = "retrieval.test.gallery_size"
    v1 = _version(client, tmp_path, {METRIC: 0.60, gallery: 1000}, test_split="aaa")
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))
    asked = []

    def rescore(version):
        asked.append(version)
        return 0.45

    v2 = _version(client, tmp_path, {METRIC: 0.50, gallery: 1000}, test_split="bbb")
    d = promote.decide(client, "m", v2, METRIC, margin=0.0, rescore=rescore)
    assert asked == [v1] and d.promote and d.champion_score == 0.45
    v3 = _version(client, tmp_path, {METRIC: 0.55, gallery: 1000}, test_split="aaa")
    assert not promote.decide(client, "m", v3, METRIC, margin=0.0, rescore=rescore).promote and asked == [v1]


def test_a_champion_ranked_by_an_earlier_rule_is_scored_again(client, tmp_path):
    """Same gallery, but the champion's recall was counted before pairs of one caption were each other's
    answers (no protocol in its metrics): its number is stricter than ours, so it is measured again."""
    gallery, protocol = "retrieval.test.gallery_size", "retrieval.test.protocol"
    v1 = _version(client, tmp_path, {METRIC: 0.50, gallery: 1000}, test_split="aaa")
    promote.gate(client, "m", v1, METRIC, margin=0.0)
    v2 = _version(client, tmp_path, {METRIC: 0.52, gallery: 1000, protocol: 2}, test_split="aaa")
    asked = []
    d = promote.decide(client, "m", v2, METRIC, margin=0.0, rescore=lambda v: asked.append(v) or 0.55)
    assert asked == [v1] and not d.promote and d.champion_score == 0.55


def test_a_champion_scored_in_another_precision_is_scored_again(client, tmp_path):
    """The same gallery and rule, but the champion's recall was measured in fp32 and this one's under bf16
    autocast (evaluate.precision changed between them): not comparable, so the champion is measured again."""
    gallery, protocol, bits = "retrieval.test.gallery_size", "retrieval.test.protocol", "retrieval.test.precision_bits"
    v1 = _version(client, tmp_path, {METRIC: 0.50, gallery: 1000, protocol: 3, bits: 32}, test_split="aaa")
    promote.gate(client, "m", v1, METRIC, margin=0.0)
    same = _version(client, tmp_path, {METRIC: 0.52, gallery: 1000, protocol: 3, bits: 32}, test_split="aaa")
    asked = []
    assert promote.decide(client, "m", same, METRIC, margin=0.0, rescore=asked.append).promote and asked == []
    v3 = _version(client, tmp_path, {METRIC: 0.52, gallery: 1000, protocol: 3, bits: 16}, test_split="aaa")
    d = promote.decide(client, "m", v3, METRIC, margin=0.0, rescore=lambda v: asked.append(v) or 0.53)
    assert asked == [v1] and not d.promote and d.champion_score == 0.53


def test_a_champion_that_cannot_be_scored_again_keeps_its_place_with_the_reason(client, tmp_path):
    from biomedclip_factory.errors import DataError

    gallery = "retrieval.test.gallery_size"
    v1 = _version(client, tmp_path, {METRIC: 0.60, gallery: 1000})
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))

    def unloadable(version):
        raise DataError(f"model models:/m/{version}: cannot load from the registry (artifacts gone)")

    v2 = _version(client, tmp_path, {METRIC: 0.90, gallery: 1200})
    d = promote.decide(client, "m", v2, METRIC, margin=0.0, rescore=unloadable)
    assert not d.promote and "could not be scored on this gallery" in d.reason and "artifacts gone" in d.reason
    assert d.blocked  # worth an alert: every later version will be refused too
    v3 = _version(client, tmp_path, {METRIC: 0.50, gallery: 1000})  # refused on its scores: no alert
    assert not promote.decide(client, "m", v3, METRIC, margin=0.0, rescore=unloadable).blocked
    d = promote.decide(client, "m", v2, METRIC, margin=0.0, rescore=lambda version: None)
    assert not d.promote and d.blocked and "got no" in d.reason  # scores nothing on any new gallery either


def test_a_champion_without_the_gate_metric_is_scored_on_it_or_not_beaten_blindly(client, tmp_path):
    """``gate_metric`` changed in params, or a champion aliased by hand: the champion has no score to beat.
    A retrieval or set metric is measured on it; one of neither cannot be, and no version is promoted past it unseen."""
    gallery, other = "retrieval.test.gallery_size", "retrieval.test.text_to_image.R_at_1"
    v1 = _version(client, tmp_path, {METRIC: 0.60, gallery: 1000})
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, METRIC, margin=0.0))
    asked = []

    def rescore(version):
        asked.append(version)
        return 0.70

    v2 = _version(client, tmp_path, {METRIC: 0.50, other: 0.65, gallery: 1000, "zeroshot.chest.auroc": 0.6,
                                     "hand.made": 0.9})
    d = promote.decide(client, "m", v2, other, margin=0.0, rescore=rescore)
    assert asked == [v1] and not d.promote and d.champion_score == 0.70, d
    d = promote.decide(client, "m", v2, other, margin=0.0)
    assert not d.promote and f"champion v{v1} was scored without '{other}'" in d.reason
    d = promote.decide(client, "m", v2, "zeroshot.chest.auroc", margin=0.0, rescore=rescore)
    assert asked == [v1, v1] and not d.promote and d.champion_score == 0.70, d
    assert "re-scored on this run's 'chest' data and settings" in d.reason
    d = promote.decide(client, "m", v2, "hand.made", margin=0.0, rescore=rescore)
    assert not d.promote and d.blocked and "has no 'hand.made' to compare with" in d.reason, d
    assert client.get_model_version_by_alias("m", "champion").version == v1


def test_a_set_score_is_compared_only_when_measured_alike(client, tmp_path):
    """A zero-shot (probe, VQA) score depends on the set's data, prompts, precision and scoring rule: a
    champion scored otherwise (``eval_measured_as`` differs or is unrecorded) is scored again first."""
    metric, asked = "zeroshot.pcam.score", []

    def version(score: float, measured: str | None) -> str:
        v = _version(client, tmp_path, {metric: score})
        if measured:
            client.set_model_version_tag("m", v, promote.MEASURED_AS, json.dumps({"zeroshot.pcam": measured}))
        return v

    def rescore(v):
        asked.append(v)
        return 0.90

    v1 = version(0.80, "aaa")
    promote.apply(client, "m", v1, promote.decide(client, "m", v1, metric, margin=0.0))
    d = promote.decide(client, "m", version(0.85, "aaa"), metric, margin=0.0, rescore=rescore)
    assert d.promote and asked == [] and d.champion_score == 0.80  # alike: the recorded score stands
    for measured in ("bbb", None):  # new prompts, or a version that recorded nothing
        d = promote.decide(client, "m", version(0.85, measured), metric, margin=0.0, rescore=rescore)
        assert not d.promote and asked[-1] == v1 and d.champion_score == 0.90, d
        assert "re-scored on this run's 'pcam' data and settings" in d.reason
    assert len(asked) == 2
    # register runs every night: a candidate measured as the last re-score was reuses it, kept on the champion
    d = promote.decide(client, "m", version(0.95, "bbb"), metric, margin=0.0, rescore=rescore)
    assert d.promote and len(asked) == 2 and d.champion_score == 0.90, d
    assert json.loads(client.get_model_version("m", v1).tags[promote.RESCORED])[metric]["score"] == 0.90


def test_the_champion_gated_again_stays_champion(client, tmp_path):
    """A rerun of the register that promoted a version gates that same version: it must not be compared
    with itself (a tie) and tagged rejected while it is champion."""
    v1 = _version(client, tmp_path, {METRIC: 0.50})
    promote.gate(client, "m", v1, METRIC, margin=0.01)
    for metric in (METRIC, "retrieval.test.text_to_image.R_at_1"):  # the same gate, or one on a metric it lacks
        d = promote.gate(client, "m", v1, metric, margin=0.01)
        assert d.promote and "already champion" in d.reason
        assert client.get_model_version_by_alias("m", "champion").version == v1
        tags = client.get_model_version("m", v1).tags
        assert tags["promotion"] == "champion" and "no champion yet" in tags["promotion_reason"]  # why it is


def test_a_rolled_back_champion_is_not_promoted_again_by_the_next_run(client, tmp_path):
    """Register runs on every `dvc repro`: a person who moves champion back from v2 to v1 (a problem the
    metric does not see) must not have it undone by the next night's gate of the same build. Deleting the
    alias lets the gate choose again."""
    v1, v2 = _version(client, tmp_path, {METRIC: 0.50}), _version(client, tmp_path, {METRIC: 0.60})
    promote.gate(client, "m", v1, METRIC, margin=0.01)
    assert promote.gate(client, "m", v2, METRIC, margin=0.01).promote
    client.set_registered_model_alias("m", "champion", v1)  # the rollback
    for _ in range(2):  # that night, and the next
        d = promote.gate(client, "m", v2, METRIC, margin=0.01)
        assert not d.promote and "was champion and v1 has replaced it" in d.reason
        assert client.get_model_version_by_alias("m", "champion").version == v1
        assert client.get_model_version("m", v2).tags["promotion"] == "deposed"
    client.delete_registered_model_alias("m", "champion")
    assert promote.gate(client, "m", v2, METRIC, margin=0.01).promote


def test_new_versions_cannot_be_aliased_champion_past_the_gate():
    assert promote.new_version_alias(Section({"alias": "challenger"}, "register")) == "challenger"
    with pytest.raises(ParamsError, match="'register.alias' must not be 'champion'"):
        promote.new_version_alias(Section({"alias": "champion"}, "register"))


def test_a_champion_moved_by_another_run_while_deciding_is_the_one_to_beat(client, tmp_path):
    """Two runs promote at once: while this one scores the old champion again (minutes), the other moves
    champion to a better version. This run must not move the alias back over it."""
    gallery = "retrieval.test.gallery_size"
    v1 = _version(client, tmp_path, {METRIC: 0.40, gallery: 1000})
    promote.gate(client, "m", v1, METRIC, margin=0.0)
    v2 = _version(client, tmp_path, {METRIC: 0.80, gallery: 1200})  # the other run's, on this gallery
    ours = _version(client, tmp_path, {METRIC: 0.60, gallery: 1200})

    def rescore(version):
        if version == v1:  # the other run promotes while ours scores v1
            client.set_registered_model_alias("m", "champion", v2)
            return 0.30
        raise AssertionError(f"v{version} is on this gallery: its tag is its score")

    d = promote.gate(client, "m", ours, METRIC, margin=0.0, rescore=rescore)
    assert not d.promote and d.champion_version == v2 and d.champion_score == 0.80
    assert client.get_model_version_by_alias("m", "champion").version == v2
    assert client.get_model_version("m", ours).tags["promotion"] == "rejected"


def test_a_gate_that_gives_up_says_so_on_the_version(client, tmp_path):
    from biomedclip_factory.errors import DataError

    gallery = "retrieval.test.gallery_size"
    rivals = [_version(client, tmp_path, {METRIC: 0.10, gallery: 1000}) for _ in range(4)]
    promote.gate(client, "m", rivals[0], METRIC, margin=0.0)
    ours = _version(client, tmp_path, {METRIC: 0.60, gallery: 1200})
    moves = iter(rivals[1:])

    def rescore(version):  # every time ours has scored the champion, another run has moved it
        client.set_registered_model_alias("m", "champion", next(moves))
        return 0.10

    with pytest.raises(DataError, match="kept moving during 3 decisions"):
        promote.gate(client, "m", ours, METRIC, margin=0.0, rescore=rescore)
    tags = client.get_model_version("m", ours).tags
    assert tags["promotion"] == "undecided" and "run register again" in tags["promotion_reason"]
