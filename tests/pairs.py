"""Pairs as the align stage makes them, for tests that write shards without running align."""
from __future__ import annotations

from typing import Any

from biomedclip_factory.corpus.records import Pair, image_path, make_pair_id


def make_pair(article: str, fig_id: str, caption: str, split: str = "train", **fields: Any) -> Pair:
    """A pair of ``article``'s figure ``fig_id`` with the fields a test does not look at filled in plausibly."""
    pair_id = make_pair_id(article, fig_id)
    base: dict[str, Any] = dict(pair_id=pair_id, pmcid=article.split(".")[0], pmid=None, fig_id=fig_id, label=None,
                                caption=caption, mentions=[], image=image_path(pair_id), width=0, height=0, sha256="",
                                phash="", license_code=None, split=split)
    return Pair(**{**base, **fields})
