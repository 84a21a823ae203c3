"""An independent reading of JATS figures with plain lxml, to check ``pmc/jats.py`` against.

Kept deliberately naive (no shared code with the parser): every ``fig`` with an id and a
``graphic``; the first graphic's href; the caption as each caption block's whitespace-normalised
text joined by one space, a ``fig-group``'s caption before its panel's. Used by the tests and by
``benchmarks/align.py`` (fidelity table).
"""
from __future__ import annotations

from lxml import etree


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def normalise(text: str) -> str:
    return " ".join(text.split())


def _caption(fig: etree._Element) -> str:
    blocks = [normalise("".join(b.itertext())) for c in fig if _local(c) == "caption" for b in c if isinstance(b.tag, str)]
    return " ".join(b for b in blocks if b)


def reference(xml: bytes) -> dict[str, tuple[str, str]] | None:
    """fig id → (graphic href, caption) for every fig with a graphic; None if the XML is malformed."""
    try:
        root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None
    out = {}
    for fig in root.iter("{*}fig"):
        graphic = next((g for g in fig.iter("{*}graphic")), None)
        if graphic is None or not fig.get("id"):
            continue
        href = next((v for k, v in graphic.attrib.items() if etree.QName(k).localname == "href"), "")
        caption = _caption(fig)
        parent = fig.getparent()
        if parent is not None and _local(parent) == "fig-group" and _caption(parent):
            caption = f"{_caption(parent)} {caption}".strip()
        out[fig.get("id")] = (href, caption)
    return out
