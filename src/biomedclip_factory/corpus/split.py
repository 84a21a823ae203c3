"""Assign articles to splits by a stable hash of the PMCID: no article ever crosses splits."""
from __future__ import annotations

import hashlib

from ..errors import ParamsError


CANONICAL_ORDER = ("train", "val", "test")


def canonical_order(names: list[str]) -> list[str]:
    """train, val, test, then any other split by name. The intervals are laid out in this order, not
    params.yaml's: DVC and the align journal compare params as mappings, so a reordered ``ratios``
    must not move articles between splits unnoticed."""
    rank = {name: i for i, name in enumerate(CANONICAL_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def split_of(pmcid: str, ratios: dict[str, float], salt: str = "") -> str:
    """The split of ``pmcid``; stable across runs, machines, corpus growth and the order ratios are written in."""
    total = sum(ratios.values())
    if total <= 0 or any(v < 0 for v in ratios.values()):
        raise ParamsError(f"split ratios must be non-negative and sum > 0, got {ratios}")
    digest = hashlib.sha256(f"{salt}{pmcid}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    names = canonical_order(list(ratios))
    acc = 0.0
    for name in names:
        acc += ratios[name]
        if point < acc:
            return name
    return names[-1]
