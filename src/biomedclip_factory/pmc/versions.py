"""Which article versions are current, and keeping ``data/raw`` equal to exactly those.

PMC publishes corrections as new versions (``PMC123.1`` → ``PMC123.2``) and keeps the old ones;
the corpus wants one version per article, the newest. When a version is superseded, retracted,
or drops out of the selection, its folder goes too, so an incremental run leaves the same
``data/raw`` a fresh run would, and the next stages stop seeing it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterable, TypeVar

T = TypeVar("T")
_VERSION = re.compile(r"^((?:PMC|LOCAL)\d+)\.(\d+)$")  # LOCAL: a user's own pairs (local_pairs.py)


def item_prefix(item: Any) -> str:
    """The ``PMC<id>.<ver>`` an item of any source stands for (a bare prefix, or an object with one)."""
    return item if isinstance(item, str) else item.prefix


def newest_versions(items: Iterable[T]) -> tuple[list[T], dict[str, str]]:
    """(the newest version of each article, in input order; superseded prefix → its successor).

    Items that are not ``PMC<id>.<ver>`` (e.g. a bad file-list line) pass through untouched.
    """
    items = list(items)
    newest: dict[str, tuple[int, str]] = {}
    for item in items:
        m = _VERSION.match(item_prefix(item))
        if m and int(m[2]) >= newest.get(m[1], (-1, ""))[0]:
            newest[m[1]] = (int(m[2]), item_prefix(item))
    kept, superseded = [], {}
    for item in items:
        m = _VERSION.match(item_prefix(item))
        if m and newest[m[1]][1] != item_prefix(item):
            superseded[item_prefix(item)] = newest[m[1]][1]
        else:
            kept.append(item)
    return kept, superseded


def prune(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete article-version folders in ``out_dir`` that are not in ``keep``; returns what went."""
    gone = []
    if out_dir.is_dir():
        for entry in sorted(out_dir.iterdir()):
            if entry.is_dir() and _VERSION.match(entry.name) and entry.name not in keep:
                shutil.rmtree(entry)
                gone.append(entry.name)
    return gone
