"""The shard layout, written once: the shard stage writes it, our loaders and open_clip's trainer read it.

``<split>/<split>-%06d.tar`` of samples ``<key>.jpg``, ``<key>.txt`` and ``<key>.json`` (the pair's
``sample_meta``), each split's ``sizes.json`` (open_clip's sample counts) and the stage's
``manifest.json`` (each split's shards, samples, bytes and digest).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..errors import DataError

IMAGE, CAPTION, META = "jpg", "txt", "json"  # a sample's members, by suffix
SIZES = "sizes.json"
MANIFEST = "manifest.json"


class ShardLayoutError(DataError):
    """Shards that are not of this layout (another version's, or another tool's): every sample would fail
    alike, so the read stops with this instead of skipping them one by one."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def shard_pattern(split: str) -> str:
    """The glob of ``split``'s shards."""
    return f"{split}-*.tar"


def sample_members(key: str, jpeg: bytes, meta: Mapping[str, Any], caption: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.{IMAGE}", jpeg), (f"{key}.{CAPTION}", caption.encode()),
            (f"{key}.{META}", json.dumps(meta, sort_keys=True).encode())]


def kept_meta(meta: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The ``names`` fields (the pair's, ``corpus.records``) of a sample's ``.json``."""
    missing = [name for name in names if name not in meta]
    if missing:
        raise ShardLayoutError(f"a sample's .{META} lacks {', '.join(missing)}: the shards were written by another "
                               "version of the shard stage (rerun it: dvc repro shard)")
    return {name: meta[name] for name in names}
