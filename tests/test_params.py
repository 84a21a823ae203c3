"""Bad params fail early, naming the stage and the key."""
from __future__ import annotations

import pytest
import yaml

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.params import load_section

from .conftest import make_project, run_stage


def test_missing_and_invalid_keys_are_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("scrape:\n  workers: -1\n  licences: some\npretrain: {}\n")
    section = load_section("scrape", params)
    with pytest.raises(ParamsError, match="'scrape.workers' must be > 0"):
        section.positive("workers")
    with pytest.raises(ParamsError, match="'scrape.licences' must be one of"):
        section.choice("licences", ("commercial", "all_cc"))
    with pytest.raises(ParamsError, match="missing key 'pretrain.steps'"):
        load_section("pretrain", params).positive("steps")
    with pytest.raises(ParamsError, match="has no section 'align'"):
        load_section("align", params)


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_stage_exits_with_one_clear_line(tmp_path):
    project = make_project(tmp_path / "p", {"scrape": {"workers": "many"}})
    proc = run_stage(project, "scrape", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("scrape: error: params: 'scrape.workers' must be int, got 'many'")
    assert "Traceback" not in proc.stderr



@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_align_filters_are_checked_before_any_work(tmp_path):
    project = make_project(tmp_path / "p", {"align": {"near_duplicate_distance": 40}})
    proc = run_stage(project, "align", check=False)
    assert proc.returncode == 2 and "'align.near_duplicate_distance' must be 0..31 bits or null, got 40" in proc.stderr


@pytest.mark.parametrize("align,said", [
    ({"crop_side": 300}, "'align.crop_side' must be in 1..max_side (256) or null, got 300"),
    ({"max_aspect_ratio": None}, "'align.crop_side' needs 'align.max_aspect_ratio'"),  # a banner would keep its length
])
def test_a_crop_side_that_would_leave_images_unbounded_is_refused(align, said):
    from biomedclip_factory.corpus.align_config import AlignConfig
    from biomedclip_factory.params import Section

    from .conftest import REPO

    section = {**yaml.safe_load((REPO / "params.yaml").read_text())["align"], **align}
    with pytest.raises(ParamsError) as caught:
        AlignConfig.from_params(Section(section, "align"))
    assert said in str(caught.value)


def test_every_key_of_every_profile_is_known():
    """The table of known keys and the shipped params cannot drift apart (a new key must be added to both)."""
    from biomedclip_factory.params import KNOWN_KEYS

    from .conftest import REPO

    for profile in (REPO / "params.yaml", *sorted((REPO / "params").glob("*.yaml"))):
        for stage in KNOWN_KEYS:
            load_section(stage, profile)  # raises on an unknown key
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage, known in KNOWN_KEYS.items():
        assert set(params[stage]) == set(known), stage  # and params.yaml spells every key out


def test_every_profile_aligns_figures_with_the_short_side_its_model_crops():
    """align.crop_side below the model's input side would store wide figures too low for the crop, which then
    trains on upscaled pixels where the paper cropped the original figures."""
    from biomedclip_factory.corpus.align_config import AlignConfig
    from biomedclip_factory.model.build import ModelSpec, timm_image_size

    from .conftest import REPO

    for profile in (REPO / "params.yaml", *sorted((REPO / "params").glob("*.yaml"))):
        image_size = timm_image_size(ModelSpec.from_params(load_section("model", profile)).timm_model_name)
        assert AlignConfig.from_params(load_section("align", profile)).crop_side >= image_size, profile.name


@pytest.mark.parametrize("section,typo,hint", [
    ("scrape", {"max_article": 2}, "unknown key 'scrape.max_article'; did you mean 'max_articles'?"),
    ("scrape", {"layuot": "pairs"}, "unknown key 'scrape.layuot'; did you mean 'layout'?"),
    ("model", {"text": {"layer": 3}}, "unknown key 'model.text.layer'; did you mean 'layers'?"),
    ("evaluate", {"zeroshot": {"mine": {"path": "x", "templetes": []}}},
     "unknown key 'evaluate.zeroshot.mine.templetes'; did you mean 'templates'?"),
])
def test_a_misspelt_key_fails_by_name_with_the_closest_known_one(tmp_path, section, typo, hint):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({section: typo}))
    with pytest.raises(ParamsError) as err:
        load_section(section, tmp_path / "params.yaml")
    assert str(err.value) == f"params: {hint}"


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_a_typo_stops_the_stage_before_any_work(tmp_path):
    project = make_project(tmp_path / "p", {"scrape": {"max_article": 2}})
    proc = run_stage(project, "scrape", check=False)
    assert proc.returncode == 2 and "did you mean 'max_articles'?" in proc.stderr
    assert not (project / "data" / "raw").exists()


@pytest.mark.slow  # runs stages or DeepSpeed in subprocesses: out of the edit-test loop
def test_a_non_numeric_split_ratio_is_one_line(tmp_path):
    project = make_project(tmp_path / "p", {"align": {"split": {"ratios": {"train": "x", "test": 0.3}}}})
    proc = run_stage(project, "align", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("'align.split.ratios' must map split names to numbers >= 0, "
                                        "got {'train': 'x', 'val': 0.0, 'test': 0.3}")
