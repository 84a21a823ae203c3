"""Pairs as the align stage makes them, for tests that write shards without running align."""
from __future__ import annotations

from typing import Any

from biomedclip_factory.corpus.records import Pair, article_of


def make_pair(pair_id: str, image: str, caption: str, split: str = "train", **fields: Any) -> Pair:
    """A pair with the fields a test does not look at filled in plausibly."""
    fig_id = pair_id.split("_", 1)[1]
    pmcid = article_of(pair_id, fig_id).split(".")[0]
    base: dict[str, Any] = dict(pair_id=pair_id, pmcid=pmcid, pmid=None, fig_id=fig_id, label=None, caption=caption,
                                mentions=[], image=image, width=0, height=0, sha256="", phash="", license_code=None,
                                split=split)
    return Pair(**{**base, **fields})
