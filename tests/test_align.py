"""Align on the real sample: pairs, rejects with reasons, image normalisation, split by article."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from biomedclip_factory.corpus.align import AlignConfig, align_corpus, resolve_image
from biomedclip_factory.corpus.images import normalise_image
from biomedclip_factory.corpus.split import split_of
from biomedclip_factory.errors import ArticleError
from biomedclip_factory.pmc.bucket import LocalBucket
from biomedclip_factory.pmc.metadata import SelectionPolicy
from biomedclip_factory.pmc.scrape import CloudSource, scrape

from .conftest import SAMPLE_MIRROR

CFG = AlignConfig(max_side=128, jpeg_quality=85, min_caption_chars=20, min_side=32,
                  split_ratios={"train": 0.7, "val": 0.0, "test": 0.3})


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    result = scrape(CloudSource(LocalBucket(SAMPLE_MIRROR)), out, SelectionPolicy.named("commercial"),
                    progress=False)
    return out, [r["prefix"] for r in result.rows if r["status"] == "ok"]


def test_sample_gives_every_figure_with_an_image(raw, tmp_path):
    raw_dir, prefixes = raw
    pairs, rejects, figures = align_corpus(raw_dir, prefixes, tmp_path, CFG, progress=False)
    assert len(pairs) == 10 and figures == 98
    assert {p["pmcid"] for p in pairs} == {"PMC2924383", "PMC2958805", "PMC3532326"}
    reasons = {r["reason"] for r in rejects}
    assert reasons == {"image_missing", "caption_too_short", "xml_malformed"}
    assert [r["article"] for r in rejects if r["reason"] == "xml_malformed"] == ["PMC12433831.1"]
    for pair in pairs:
        img = Image.open(tmp_path / pair["image"])
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 128
        assert (img.width, img.height) == (pair["width"], pair["height"])
        assert pair["license_code"] == "CC BY" and pair["split"] == split_of(pair["pmcid"], CFG.split_ratios)


def test_split_is_by_article_and_stable(raw, tmp_path):
    raw_dir, prefixes = raw
    pairs, _, _ = align_corpus(raw_dir, prefixes, tmp_path, CFG, progress=False)
    by_article: dict[str, set[str]] = {}
    for p in pairs:
        by_article.setdefault(p["pmcid"], set()).add(p["split"])
    assert all(len(s) == 1 for s in by_article.values())
    again, _, _ = align_corpus(raw_dir, prefixes, tmp_path / "again", CFG, progress=False)
    assert [p["sha256"] for p in again] == [p["sha256"] for p in pairs]


def test_exact_duplicates_are_rejected(raw, tmp_path):
    raw_dir, _ = raw
    art = raw_dir / "PMC2924383.1"
    (art / "pone.0012255.g002.jpg").write_bytes((art / "pone.0012255.g001.jpg").read_bytes())
    try:
        pairs, rejects, _ = align_corpus(raw_dir, ["PMC2924383.1"], tmp_path, CFG, progress=False)
    finally:
        (art / "pone.0012255.g002.jpg").write_bytes((SAMPLE_MIRROR / "PMC2924383.1" / "pone.0012255.g002.jpg").read_bytes())
    assert len(pairs) == 3
    assert [(r["fig_id"], r["reason"]) for r in rejects] == [("pone-0012255-g002", "duplicate_image")]


def test_resolve_prefers_full_image_over_thumbnail(tmp_path):
    (tmp_path / "fig.g001.gif").write_bytes(b"thumb")
    (tmp_path / "fig.g001.jpg").write_bytes(b"full")
    assert resolve_image(tmp_path, "fig.g001").name == "fig.g001.jpg"
    assert resolve_image(tmp_path, "fig.g001.gif").name == "fig.g001.gif"
    assert resolve_image(tmp_path, "missing") is None


def test_normalise_converts_modes_and_rejects_garbage_and_bombs():
    buf = io.BytesIO()
    Image.new("P", (300, 100)).save(buf, format="PNG")
    img = normalise_image(buf.getvalue(), 64, 90, "a.png")
    assert (img.width, img.height) == (64, 21)
    with pytest.raises(ArticleError, match="b.jpg: undecodable image"):
        normalise_image(b"not an image", 64, 90, "b.jpg")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    with pytest.raises(ArticleError, match="c.png: image too large"):
        normalise_image(bomb.getvalue(), 64, 90, "c.png")
