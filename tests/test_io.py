"""Output dirs are swapped in whole: a reader sees the old one or the new one, never neither."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from biomedclip_factory.io import exchange_paths, replace_dir


def _dir(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "weights").write_text(text)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_the_swap_is_one_atomic_exchange_here(tmp_path):
    a, b = _dir(tmp_path / "a", "A"), _dir(tmp_path / "b", "B")
    assert exchange_paths(a, b)  # Linux renameat2 on this filesystem: the path CI and users take
    assert (a / "weights").read_text() == "B" and (b / "weights").read_text() == "A"
    assert not exchange_paths(a, tmp_path / "missing") and (a / "weights").read_text() == "B"


def test_replace_dir_puts_the_new_output_in_place_and_drops_the_old(tmp_path):
    target = _dir(tmp_path / "clip", "old")
    replace_dir(_dir(tmp_path / "clip.tmp", "new"), target)
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["clip"]
    replace_dir(_dir(tmp_path / "fresh.tmp", "first"), tmp_path / "fresh")  # no previous output
    assert (tmp_path / "fresh" / "weights").read_text() == "first"


def test_a_symlinked_output_is_replaced_by_the_new_dir_and_its_old_target_kept(tmp_path):
    elsewhere = _dir(tmp_path / "elsewhere", "old")
    (tmp_path / "clip").symlink_to(elsewhere)
    replace_dir(_dir(tmp_path / "clip.tmp", "new"), tmp_path / "clip")
    assert not (tmp_path / "clip").is_symlink() and (tmp_path / "clip" / "weights").read_text() == "new"
    assert (elsewhere / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "elsewhere"]

