"""Assign articles to splits by a stable hash of the PMCID: no article ever crosses splits."""
from __future__ import annotations

import hashlib

from ..errors import ParamsError


def split_of(pmcid: str, ratios: dict[str, float], salt: str = "") -> str:
    """The split of ``pmcid``; stable across runs, machines and corpus growth."""
    total = sum(ratios.values())
    if total <= 0 or any(v < 0 for v in ratios.values()):
        raise ParamsError(f"split ratios must be non-negative and sum > 0, got {ratios}")
    digest = hashlib.sha256(f"{salt}{pmcid}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * total
    acc = 0.0
    for name, ratio in ratios.items():
        acc += ratio
        if point < acc:
            return name
    return list(ratios)[-1]
