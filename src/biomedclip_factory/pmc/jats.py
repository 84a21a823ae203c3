"""Figures and their captions from JATS XML, right on the cases pubmed_parser gets wrong.

Namespace-agnostic (matches local names), reads ``xlink:href`` by name (never "the first
attribute"), finds graphics inside ``<alternatives>``, walks ``<fig-group>`` (group caption kept
with each panel's own) and ``<floats-group>``, tolerates figures without id or caption, and keeps
word boundaries across inline markup: block elements are joined by one space, inline text is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from lxml import etree

from ..errors import ArticleError

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_BLOCKS = frozenset({"title", "p", "list-item", "def-item", "disp-quote", "disp-formula"})
_SKIP_IN_CAPTION = frozenset({"inline-graphic", "graphic", "alternatives", "object-id"})


@dataclass(frozen=True)
class Figure:
    fig_id: str
    label: str
    caption: str
    href: str | None


@dataclass(frozen=True)
class Article:
    pmcid: str | None
    pmid: str | None
    doi: str | None
    figures: tuple[Figure, ...]


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _children(el: etree._Element, name: str) -> Iterator[etree._Element]:
    return (c for c in el if _local(c) == name)


def _href(el: etree._Element) -> str | None:
    for attr, value in el.attrib.items():
        if etree.QName(attr).localname == "href":
            return value.strip() or None
    return None


def _text(el: etree._Element) -> str:
    """Text of ``el`` with block children separated by a space and inline markup kept in place."""
    parts: list[str] = []

    def walk(node: etree._Element) -> None:
        name = _local(node)
        if name in _SKIP_IN_CAPTION:
            if node.tail:
                parts.append(node.tail)
            return
        block = name in _BLOCKS
        if block:
            parts.append(" ")
        if node.text and isinstance(node.tag, str):
            parts.append(node.text)
        for child in node:
            walk(child)
        if block:
            parts.append(" ")
        if node.tail and node is not el:
            parts.append(node.tail)

    walk(el)
    return " ".join("".join(parts).split())


def _graphic_href(fig: etree._Element) -> str | None:
    """The figure's own graphic: a ``<graphic>`` child, also inside ``<alternatives>``."""
    for child in fig:
        name = _local(child)
        if name == "graphic" and _href(child):
            return _href(child)
        if name == "alternatives":
            for alt in child:
                if _local(alt) == "graphic" and _href(alt):
                    return _href(alt)
    return None


def _caption(fig: etree._Element) -> str:
    return " ".join(_text(c) for c in _children(fig, "caption")).strip()


def _label(fig: etree._Element) -> str:
    return " ".join(_text(c) for c in _children(fig, "label")).strip()


def _figures(root: etree._Element) -> Iterator[Figure]:
    seen = 0
    for fig in root.iter("{*}fig"):
        seen += 1
        caption = _caption(fig)
        parent = fig.getparent()
        if parent is not None and _local(parent) == "fig-group":
            group_caption = _caption(parent)
            caption = f"{group_caption} {caption}".strip() if group_caption else caption
        yield Figure(
            fig_id=(fig.get("id") or f"fig{seen}").strip(),
            label=_label(fig),
            caption=caption,
            href=_graphic_href(fig),
        )


def _article_id(root: etree._Element, *kinds: str) -> str | None:
    for el in root.iter("{*}article-id"):
        if el.get("pub-id-type") in kinds and el.text:
            return el.text.strip()
    return None


def parse_article(xml: bytes, where: str) -> Article:
    """Parse JATS ``xml``; a malformed document raises ArticleError naming ``where``."""
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ArticleError(f"{where}: malformed XML: {exc}") from exc
    if root is None:
        raise ArticleError(f"{where}: empty XML document")
    pmcid = _article_id(root, "pmcid", "pmc")
    if pmcid and not pmcid.startswith("PMC"):
        pmcid = "PMC" + pmcid
    return Article(
        pmcid=pmcid,
        pmid=_article_id(root, "pmid"),
        doi=_article_id(root, "doi"),
        figures=tuple(_figures(root)),
    )
