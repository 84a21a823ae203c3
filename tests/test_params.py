"""Bad params fail early, naming the stage and the key."""
from __future__ import annotations

import pytest

from biomedclip_factory.errors import ParamsError
from biomedclip_factory.params import load_section

from .conftest import make_project, run_module


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


def test_stage_exits_with_one_clear_line(tmp_path):
    project = make_project(tmp_path / "p", {"scrape": {"workers": "many"}})
    proc = run_module(project, "stages.scrape", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("scrape: error: params: 'scrape.workers' must be int, got 'many'")
    assert "Traceback" not in proc.stderr



def test_align_filters_are_checked_before_any_work(tmp_path):
    project = make_project(tmp_path / "p", {"align": {"near_duplicate_distance": 40}})
    proc = run_module(project, "stages.align", check=False)
    assert proc.returncode == 2 and "'align.near_duplicate_distance' must be 0..31 bits or null, got 40" in proc.stderr
