"""The corpus's records, a figure–caption pair and a reject: their fields, Arrow schema and ids.

DESIGN's data contracts as code, written once. Align makes these records, the journal stores them,
the pairs table (``PAIR_SCHEMA``) and the WebDataset shards (``Pair.shard_key``, ``Pair.sample_meta``)
are written from them, and dedup and the plots read their ids through them, never by parsing strings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import pyarrow as pa

from ..errors import DataError

ID_SEPARATOR = "_"


def make_pair_id(article: str, fig_id: str) -> str:
    """``<article version>_<figure id>``: unique in the corpus, since a figure id is unique in its article."""
    return f"{article}{ID_SEPARATOR}{fig_id}"


def image_path(pair_id: str) -> str:
    """Where a pair's normalised JPEG lies, relative to the pairs folder."""
    return f"images/{pair_id}.jpg"


def article_of(pair_id: str, fig_id: str) -> str:
    """The article version (``PMC123.1``) in ``pair_id``, the inverse of ``make_pair_id``."""
    return pair_id[: -len(fig_id) - len(ID_SEPARATOR)]


@dataclass(frozen=True, slots=True)
class Pair:
    """One kept figure with its caption, from one article version."""
    pair_id: str
    pmcid: str
    pmid: str | None
    fig_id: str
    label: str | None
    caption: str
    mentions: list[str]  # body sentences citing the figure
    image: str  # path of the normalised JPEG, relative to the pairs folder
    width: int
    height: int
    sha256: str  # of the normalised JPEG: exact duplicates
    phash: str  # 64-bit perceptual hash, hex: near duplicates
    license_code: str | None
    split: str

    @property
    def article(self) -> str:
        return article_of(self.pair_id, self.fig_id)

    @property
    def shard_key(self) -> str:
        """Its WebDataset key. WebDataset cuts a member's name at its first dot into key and extension,
        so no dot may remain: the article version's becomes ``v``; the figure id's (Copernicus ``Ch1.F1``,
        a DOI-style ``pone.0012255.g001``) are percent-escaped, as are ``%`` and ``/``, so keys stay unique."""
        article = self.article.replace(".", "v", 1)
        figure = self.fig_id.replace("%", "%25").replace(".", "%2E").replace("/", "%2F")
        return f"{article}{ID_SEPARATOR}{figure}"

    def row(self) -> dict[str, Any]:
        """The pair as a table row (the journal's JSON, ``PAIR_SCHEMA``'s columns), fields in order."""
        return {name: getattr(self, name) for name in PAIR_FIELDS}

    def sample_meta(self) -> dict[str, Any]:
        """What a shard's ``.json`` member holds: every field but the image path, local to this corpus."""
        return {name: getattr(self, name) for name in PAIR_FIELDS if name != "image"}

    def dedup_key(self) -> DedupKey:
        return DedupKey(self.pair_id, self.fig_id, self.sha256, self.phash, self.image)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Pair:
        missing = [name for name in PAIR_FIELDS if name not in row]
        if missing:
            raise DataError(f"pair {row.get('pair_id', '?')}: the row lacks {', '.join(missing)} (written by an older "
                            "align? rerun it)")
        return cls(**{name: row[name] for name in PAIR_FIELDS})


PAIR_FIELDS = tuple(f.name for f in dataclasses.fields(Pair))
_ARROW_TYPES = {"str": pa.string(), "str | None": pa.string(), "int": pa.int64(), "list[str]": pa.list_(pa.string())}
PAIR_SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.type]) for f in dataclasses.fields(Pair)])


class DedupKey(NamedTuple):
    """What corpus-wide dedup needs of a pair, held in memory for the whole corpus (~0.5 KB each)."""
    pair_id: str
    fig_id: str
    sha256: str
    phash: str
    image: str

    @property
    def article(self) -> str:
        return article_of(self.pair_id, self.fig_id)


@dataclass(frozen=True, slots=True)
class Reject:
    """A figure (or, with no ``fig_id``, a whole article version) left out of the corpus, and why."""
    article: str
    fig_id: str | None
    reason: str
    detail: str = ""

    @property
    def pair_id(self) -> str | None:
        """The id the pair would have had: duplicates are looked up by it."""
        return None if self.fig_id is None else make_pair_id(self.article, self.fig_id)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REJECT_FIELDS}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Reject:
        return cls(**{name: row[name] for name in REJECT_FIELDS})


REJECT_FIELDS = tuple(f.name for f in dataclasses.fields(Reject))
