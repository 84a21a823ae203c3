"""JATS figure extraction on real articles and on each messy case pubmed_parser gets wrong."""
from __future__ import annotations

import gzip
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomedclip_factory.errors import ArticleError
from biomedclip_factory.pmc.jats import parse_article

from .conftest import SAMPLE_MIRROR
from .jats_reference import normalise, reference

FIXTURES = Path(__file__).parent / "fixtures" / "jats"  # more real articles, XML only (ATTRIBUTION.md)
REAL_ARTICLES = sorted(FIXTURES.glob("*.xml.gz")) + sorted(SAMPLE_MIRROR.glob("*/*.xml"))


def _real(name: str) -> bytes:
    return gzip.decompress((FIXTURES / f"{name}.xml.gz").read_bytes())


def _article(prefix: str):
    return parse_article((SAMPLE_MIRROR / prefix / f"{prefix}.xml").read_bytes(), prefix)


def test_real_plos_article_figures_and_caption():
    art = _article("PMC2924383.1")
    assert art.pmcid == "PMC2924383" and art.doi == "10.1371/journal.pone.0012255"
    assert [f.href for f in art.figures] == [f"pone.0012255.g00{i}" for i in range(1, 5)]
    first = art.figures[0]
    assert first.fig_id == "pone-0012255-g001" and first.label == "Figure 1"
    # Checked by hand against the article: title and first paragraph joined by one space.
    assert first.caption.startswith("Experimental design. In an adaptation phase, observers were exposed")


def test_real_bmc_article_ids_without_extension():
    art = _article("PMC3532326.1")
    assert [(f.fig_id, f.href) for f in art.figures] == [("F1", "1756-0500-5-615-1"), ("F2", "1756-0500-5-615-2")]
    # Bold/italic runs inside the first <p>, checked by hand: words neither fused nor dropped.
    assert art.figures[0].caption.startswith(
        "Distribution of SNVs, insertions, and deletions along the C. elegans genome for Hawaiian isolate "
        "CB4856. Segmented rings on the outside represent the six C. elegans chromosomes.")


def test_inline_markup_keeps_word_boundaries():
    xml = (b'<article><fig id="f1"><label>Fig. 1</label><caption><title>Titre</title>'
           b"<p>Cells at 10<sup>4</sup> PFU<italic>in vivo</italic> and <bold>B</bold> panel.</p>"
           b'<p>Second <inline-graphic xlink:href="x.gif" xmlns:xlink="http://www.w3.org/1999/xlink"/>para.</p>'
           b'</caption><graphic xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="g1"/></fig></article>')
    fig = parse_article(xml, "t").figures[0]
    assert fig.caption == "Titre Cells at 104 PFUin vivo and B panel. Second para."


def test_namespaced_alternatives_group_and_missing_parts():
    xml = b"""<article xmlns="https://jats.nlm.nih.gov/ns/archiving/1.4/" xmlns:xlink="http://www.w3.org/1999/xlink">
      <front><article-meta><article-id pub-id-type="pmc">123</article-id></article-meta></front>
      <body><fig-group id="g"><caption><p>Group caption.</p></caption>
        <fig id="a"><caption><p>Panel A.</p></caption>
          <alternatives><graphic mimetype="image" xlink:href="a.tif"/></alternatives></fig>
        <fig><graphic mimetype="image" mime-subtype="jpeg" xlink:href="b"/></fig>
      </fig-group></body>
      <floats-group><fig id="c"><graphic xlink:href="c"/></fig><fig id="d"><caption><p>No graphic</p></caption></fig></floats-group>
    </article>"""
    art = parse_article(xml, "t")
    assert art.pmcid == "PMC123"
    got = [(f.fig_id, f.href, f.caption) for f in art.figures]
    assert got == [("a", "a.tif", "Group caption. Panel A."), ("fig2", "b", "Group caption."),
                   ("c", "c", ""), ("d", None, "No graphic")]


def test_malformed_xml_is_our_error_naming_the_article():
    with pytest.raises(ArticleError, match="PMC1.1.xml: malformed XML"):
        parse_article(b"<article><fig id='x'><caption>", "PMC1.1.xml")


def test_inline_mentions_are_the_citing_body_sentences():
    xml = b"""<article><body>
      <p>Cells grew fast (Fig. 1). As shown by Smith et al. in Figs. <xref ref-type="fig" rid="f1 f2">1-2</xref>, growth
         stops at 10 <italic>h</italic>. Unrelated sentence. See <xref ref-type="bibr" rid="r1">1</xref>.</p>
      <p>Panels in <xref ref-type="fig" rid="g">Figure 3</xref> agree! Again <xref ref-type="fig" rid="f1">Fig. 1</xref>
         <list><list-item><p>Nested, citing <xref ref-type="fig" rid="f2">Fig. 2</xref>.</p></list-item></list></p>
      <fig id="f1"><caption><p>Self-citing caption, <xref ref-type="fig" rid="f2">Fig. 2</xref>, is not a mention.</p>
        </caption><graphic xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="f1"/></fig>
      <fig id="f2"><graphic xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="f2"/></fig>
      <fig-group id="g"><fig id="g-a"><graphic xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="ga"/></fig></fig-group>
    </body></article>"""
    figs = {f.fig_id: f.mentions for f in parse_article(xml, "t").figures}
    both = "As shown by Smith et al. in Figs. 1-2, growth stops at 10 h."
    assert figs["f1"] == (both, "Again Fig. 1 Nested, citing Fig. 2.")  # "(Fig. 1)" without an xref is no mention
    assert figs["f2"] == (both, "Nested, citing Fig. 2.")  # a nested paragraph's reference is cited in its own
    assert figs["g-a"] == ("Panels in Figure 3 agree!",)  # a group's mention belongs to each of its panels
    tricky = parse_article('<article><p>Odd \ue0007\ue001 text, <xref ref-type="fig" rid="f">Fig. 1</xref>.</p><fig id="f">'
                           '<graphic xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="f"/></fig></article>'.encode(), "t")
    assert tricky.figures[0].mentions == ("Odd 7 text, Fig. 1.",)  # marker-like characters in the text are dropped


def test_real_article_mentions_checked_by_hand():
    article = _article("PMC3532326.1")
    f2 = next(f for f in article.figures if f.fig_id == "F2")
    assert f2.mentions == (
        "Figure 2A shows one such example affecting Ensembl transcript ENST00000253255.",
        "In the example shown in Figure 2B, VEP classifies SNV 10:27,702,726:G->A as synonymous because it changes "
        "codon CTG on the reverse strand (coding for leucine) to TTG (also coding for leucine).")


_TAGS = ["fig", "fig-group", "caption", "title", "p", "label", "graphic", "alternatives", "xref", "italic", "sup",
         "inline-graphic", "disp-formula", "list", "list-item", "floats-group", "body", "table-wrap"]
_WORDS = st.text(alphabet=st.sampled_from("abc. ()Fig12\u2009\n<&>\ue000\ue001"), max_size=12)


@st.composite
def _elements(draw, depth: int = 0) -> str:
    tag = draw(st.sampled_from(_TAGS))
    attrs = ""
    if draw(st.booleans()):
        attrs += f' id="{draw(st.sampled_from(["f1", "f2", "g", "", " f1 "]))}"'
    if tag == "xref":
        attrs += f' ref-type="{draw(st.sampled_from(["fig", "bibr"]))}" rid="{draw(st.sampled_from(["f1", "f1 f2", "g", ""]))}"'
    if tag in ("graphic", "inline-graphic"):
        attrs += f' xlink:href="{draw(st.sampled_from(["a", "b.jpg", "", "  "]))}" mimetype="image"'
    children = draw(st.lists(_elements(depth + 1), max_size=3)) if depth < 4 else []
    text = escape(draw(_WORDS))
    return f"<{tag}{attrs}>{text}{''.join(children)}</{tag}>{escape(draw(_WORDS))}"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(body=st.lists(_elements(), max_size=4), cut=st.integers(0, 2000), junk=st.binary(max_size=8))
def test_fuzzed_jats_gives_figures_or_our_error(body, cut, junk):
    xml = ('<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>' + "".join(body) + "</body></article>").encode()
    for document in (xml, xml[:cut] + junk):
        try:
            article = parse_article(document, "fuzz.xml")
        except ArticleError as exc:
            assert "fuzz.xml" in str(exc)
            continue
        for fig in article.figures:
            for text in (fig.caption, fig.label, *fig.mentions):
                assert text == " ".join(text.split())
            assert fig.fig_id and fig.href != ""


def test_mentions_can_be_skipped_without_changing_anything_else():
    xml = (SAMPLE_MIRROR / "PMC3532326.1" / "PMC3532326.1.xml").read_bytes()
    full, lean = parse_article(xml, "a"), parse_article(xml, "a", mentions=False)
    assert all(f.mentions == () for f in lean.figures) and any(f.mentions for f in full.figures)
    assert [(f.fig_id, f.caption, f.href) for f in lean.figures] == [(f.fig_id, f.caption, f.href) for f in full.figures]


@pytest.mark.parametrize("path", REAL_ARTICLES, ids=lambda p: p.name)
def test_every_real_article_matches_an_independent_reading(path):
    """38 real articles (eLife, EHP, Springer, MDPI, PLOS, BMC, Wiley, bioRxiv …, some in OAI-PMH
    envelopes, 150 figures): same figures, hrefs and captions as a naive lxml reading."""
    xml = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    expected = reference(xml)
    if expected is None:  # the sample's truncated article
        with pytest.raises(ArticleError, match=path.name):
            parse_article(xml, path.name)
        return
    got = parse_article(xml, path.name).figures
    assert {f.fig_id: (f.href, normalise(f.caption)) for f in got} == expected
    assert len(got) == len(expected)  # no figure listed twice


# (fixture, figure index, label, href, caption) — each read off the XML by hand
HAND_CHECKED = [
    ("elife-00353-v1", 0, "", "elife-00353-fig1-v1",
     "This illustration of Eve Marder in her office at Brandeis was drawn by her nephew Ben Marder."),
    ("ehp-116-1694", 1, "Figure 2", "ehp-116-1694f2",  # entities decoded; two <p> joined by one space
     "Dietary exposure to PBDE-47 altered relative transcripts levels for TSHβ (A) and GPHα (B) in the "
     "pituitary gland. Transcript levels are expressed relative to template RNA levels. "
     "*p < 0.05 compared with control."),
    ("PMC10777901", 0, "Figure 1", "cancers-16-00233-g001",  # indented XML: newlines are not words
     "Presurgical 18F-FDG PET/CT results of 3 patients with presumed localized CC (arrows) showing "
     "additional colon lesion or visceral metastasis not visualized at conventional staging (dotted "
     "arrows). 57-old year man with (pT3) sigmoid primary (A) and synchronous invasive carcinoma (T2) "
     "of left colon (B). 74-old year man with 11 cm (pT3) tumor of the caecum (C), and adenoma with high "
     "grade dysplasia of the right colon (D). 46-old year woman with incomplete colonoscopy due to a "
     "sigmoid tumoral stenosis (pT3) (E), and right ovary metastasis (F)."),
    ("elife-95901-meca-24301711", 0, "Figure 1.", "24301711v1_fig1.tif",
     "Flow chart of participant selection for this study"),
]


@pytest.mark.parametrize("name,index,label,href,caption", HAND_CHECKED, ids=[h[0] for h in HAND_CHECKED])
def test_real_captions_checked_by_hand(name, index, label, href, caption):
    fig = parse_article(_real(name), name).figures[index]
    assert (fig.label, fig.href, fig.caption) == (label, href, caption)


def test_oai_pmh_envelope_namespaced_jats_and_thin_spaces():
    """A PMC OAI-PMH GetRecord (JATS 1.3 default namespace), checked by hand."""
    art = parse_article(_real("PMC6500000"), "PMC6500000")
    assert (art.pmcid, art.pmid, art.doi) == ("PMC6500000", "31053174", "10.1186/s40425-019-0603-3")
    fig = art.figures[0]
    assert (fig.fig_id, fig.label, fig.href) == ("Fig1", "Fig. 1", "40425_2019_603_Fig1_HTML")
    # "<bold>a</bold>, A spider plot" and "12&#8201;weeks" (a thin space) as a reader sees them
    assert "papillomatosis. a, A spider plot of change" in fig.caption
    assert "received 6 doses of avelumab over 12 weeks. Patients 1, 2" in fig.caption
    assert fig.caption.endswith("Red arrows point to index lesions")
