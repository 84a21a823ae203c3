"""Align on the real sample: pairs, rejects with reasons, image normalisation, split by article."""
from __future__ import annotations

import io
from dataclasses import replace

import imagehash
import numpy as np
import pytest
from PIL import Image

from biomedclip_factory.corpus.align import resolve_image
from biomedclip_factory.corpus.align_config import AlignConfig
from biomedclip_factory.corpus.assemble import align_corpus
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
    return out, [r["prefix"] for r in result.lines() if r["status"] == "ok"]


def test_sample_gives_every_figure_with_an_image(raw, tmp_path):
    raw_dir, prefixes = raw
    pairs, rejects, figures = align_corpus(raw_dir, prefixes, tmp_path, CFG, progress=False)
    assert len(pairs) == 10 and figures == 98
    assert {p.pmcid for p in pairs} == {"PMC2924383", "PMC2958805", "PMC3532326"}
    reasons = {r.reason for r in rejects}
    assert reasons == {"image_missing", "caption_too_short", "xml_malformed"}
    assert [r.article for r in rejects if r.reason == "xml_malformed"] == ["PMC12433831.1"]
    for pair in pairs:
        img = Image.open(tmp_path / pair.image)
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 128
        assert (img.width, img.height) == (pair.width, pair.height)
        assert pair.license_code == "CC BY" and pair.split == split_of(pair.pmcid, CFG.split_ratios)


def test_split_is_by_article_and_stable(raw, tmp_path):
    raw_dir, prefixes = raw
    pairs, _, _ = align_corpus(raw_dir, prefixes, tmp_path, CFG, progress=False)
    by_article: dict[str, set[str]] = {}
    for p in pairs:
        by_article.setdefault(p.pmcid, set()).add(p.split)
    assert all(len(s) == 1 for s in by_article.values())
    again, _, _ = align_corpus(raw_dir, prefixes, tmp_path / "again", CFG, progress=False)
    assert [p.sha256 for p in again] == [p.sha256 for p in pairs]


def _with_image(raw_dir, name: str, data: bytes):
    """Temporarily replace one scraped figure of PMC2924383.1 (restored after the block)."""
    import contextlib

    @contextlib.contextmanager
    def swap():
        path = raw_dir / "PMC2924383.1" / name
        path.write_bytes(data)
        try:
            yield
        finally:
            path.write_bytes((SAMPLE_MIRROR / "PMC2924383.1" / name).read_bytes())
    return swap()


def _reencoded(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def test_exact_and_near_duplicates_are_rejected_corpus_wide(raw, tmp_path):
    raw_dir, _ = raw
    g001 = (raw_dir / "PMC2924383.1" / "pone.0012255.g001.jpg").read_bytes()
    with _with_image(raw_dir, "pone.0012255.g002.jpg", g001):
        pairs, rejects, _ = align_corpus(raw_dir, ["PMC2924383.1"], tmp_path / "a", CFG, progress=False)
    assert len(pairs) == 3
    assert [(r.fig_id, r.reason) for r in rejects] == [("pone-0012255-g002", "duplicate_image")]

    near = replace(CFG, near_duplicate_max_distance=6)
    with _with_image(raw_dir, "pone.0012255.g003.jpg", _reencoded(g001, 0.8, 40)):  # same figure, resized, lossier
        exact_only, _, _ = align_corpus(raw_dir, ["PMC2924383.1"], tmp_path / "b", CFG, progress=False)
        pairs, rejects, _ = align_corpus(raw_dir, ["PMC2924383.1"], tmp_path / "c", near, progress=False)
    assert len(exact_only) == 4 and len(pairs) == 3
    assert [(r.fig_id, r.reason, r.detail) for r in rejects] == [
        ("pone-0012255-g003", "near_duplicate_image", "PMC2924383.1_pone-0012255-g001")]
    distinct, _, _ = align_corpus(raw_dir, ["PMC2924383.1", "PMC3532326.1"], tmp_path / "d", near, progress=False)
    assert len(distinct) == 6  # different figures stay apart at this distance


def test_extreme_aspect_ratios_are_rejected(raw, tmp_path):
    raw_dir, _ = raw
    strip = io.BytesIO()
    Image.new("RGB", (900, 250), "white").save(strip, format="JPEG")
    with _with_image(raw_dir, "pone.0012255.g004.jpg", strip.getvalue()):
        pairs, rejects, _ = align_corpus(raw_dir, ["PMC2924383.1"], tmp_path, replace(CFG, max_aspect_ratio=3.0),
                                         progress=False)
    assert len(pairs) == 3
    assert [(r.fig_id, r.reason, r.detail) for r in rejects] == [("pone-0012255-g004", "aspect_ratio", "128x36")]


def test_pairs_carry_the_sentences_citing_their_figure(raw, tmp_path):
    raw_dir, _ = raw
    pairs, _, _ = align_corpus(raw_dir, ["PMC3532326.1"], tmp_path, CFG, progress=False)
    f2 = next(p for p in pairs if p.fig_id == "F2")
    assert f2.mentions[0] == "Figure 2A shows one such example affecting Ensembl transcript ENST00000253255."


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
    with pytest.raises(ArticleError, match="b.jpg: undecodable image") as first:
        normalise_image(b"not an image", 64, 90, "b.jpg")
    with pytest.raises(ArticleError) as again:  # rejects.jsonl is a DVC output: no buffer address in it
        normalise_image(b"not an image", 64, 90, "b.jpg")
    assert str(first.value) == str(again.value) == "b.jpg: undecodable image: not an image format Pillow reads"
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    with pytest.raises(ArticleError, match="c.png: image too large"):
        normalise_image(bomb.getvalue(), 64, 90, "c.png")


def test_transparent_16_bit_and_float_figures_keep_what_a_reader_sees():
    """Black text on a transparent background (transparent pixels stored black, as plotting tools
    write them) stays readable on white; 16-bit and float images keep their tones."""
    import numpy as np

    def normalised(img: Image.Image, fmt: str) -> np.ndarray:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out = normalise_image(buf.getvalue(), 64, 95, f"x.{fmt.lower()}")
        return np.asarray(Image.open(io.BytesIO(out.jpeg)).convert("L"), dtype=float)

    text = np.zeros((64, 64, 4), np.uint8)
    text[20:40, 10:50, 3] = 255  # opaque black "text"; everything else transparent black
    grey = normalised(Image.fromarray(text, "RGBA"), "PNG")
    assert grey[:15].mean() > 240 and grey[25:35, 15:45].mean() < 30  # white page, black text
    palette = Image.fromarray(text, "RGBA").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = palette.getpixel((0, 0))
    assert normalised(palette, "PNG")[:15].mean() > 240
    ramp = np.tile(np.linspace(0, 61425, 64), (64, 1))
    tones = normalised(Image.fromarray(ramp.astype(np.uint16)), "PNG")
    assert len(np.unique(np.round(tones[32]))) > 40 and tones[:, :4].mean() < 10 and tones[:, -4:].mean() > 245
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1)).astype(np.float32)
    floats = normalised(Image.fromarray(ramp, "F"), "TIFF")
    assert floats[:, -4:].mean() > 245  # not black
    ramp[0, 0], ramp[0, 1] = np.nan, np.inf
    assert normalised(Image.fromarray(ramp, "F"), "TIFF")[8:, -4:].mean() > 245  # a NaN or inf does not black it out
    keyed = Image.fromarray(np.zeros((64, 64, 3), np.uint8), "RGB")
    keyed.info["transparency"] = (0, 0, 0)  # an RGB PNG's tRNS colour key
    assert normalised(keyed, "PNG").mean() > 240


# 256: libjpeg decodes at 1/2 scale (DCT-domain), then the resize; 512: full decode, then the resize
@pytest.mark.parametrize("max_side,mean_error", [(256, 4.0), (512, 2.0)])
def test_normalised_real_figure_matches_pillows_bicubic_thumbnail(max_side, mean_error):
    data = (SAMPLE_MIRROR / "PMC2924383.1" / "pone.0012255.g002.jpg").read_bytes()  # 465 x 783
    img = normalise_image(data, max_side, 95, "g002.jpg")
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    reference.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    assert (img.width, img.height) == reference.size and img.height == max_side
    ours = np.asarray(Image.open(io.BytesIO(img.jpeg)), dtype=np.int16)
    assert np.abs(ours - np.asarray(reference, dtype=np.int16)).mean() < mean_error  # of 255: not another image
    assert int(img.phash, 16).bit_count() > 0
    assert imagehash.hex_to_hash(img.phash) - imagehash.phash(reference) <= 4


@pytest.mark.parametrize("size,expected", [
    ((2000, 400), (1120, 224)),   # 5:1: the shorter side stops at the crop's 224, not at 512 / 5 = 102
    ((400, 2000), (224, 1120)),
    ((2000, 1800), (512, 461)),   # near square: the longer side's bound already keeps more than 224
    ((300, 100), None),           # never enlarged
])
def test_an_elongated_figure_keeps_the_short_side_its_training_crop_reads(size, expected):
    from biomedclip_factory.corpus.images import target_size

    assert target_size(*size, max_side=512, crop_side=224) == expected
    assert target_size(2000, 400, max_side=512, crop_side=None) == (512, 102)  # the longer side alone


def test_a_wide_real_figure_is_stored_with_the_crop_side_and_its_crop_needs_no_upscaling():
    """A 4.4:1 strip of a real figure, as a JPEG: stored at a 160-px short side (the default model's input),
    its training crop (RandomResizedCrop's fallback: the full height, aspect 4/3) is downscaled, not enlarged."""
    from torchvision import transforms

    figure = Image.open(SAMPLE_MIRROR / "PMC2924383.1" / "pone.0012255.g002.jpg").convert("RGB")  # 465 x 783
    strip = figure.rotate(90, expand=True).crop((0, 100, 783, 280))  # 783 x 180
    data = io.BytesIO()
    strip.save(data, format="JPEG", quality=95)
    img = normalise_image(data.getvalue(), 256, 95, "strip.jpg", crop_side=160)
    assert (img.width, img.height) == (696, 160)
    stored = Image.open(io.BytesIO(img.jpeg))
    reference = strip.resize((696, 160), Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).mean() < 4.0
    _, _, crop_h, _ = transforms.RandomResizedCrop.get_params(stored, [0.9, 1.0], [3 / 4, 4 / 3])
    assert crop_h >= 160
    assert normalise_image(data.getvalue(), 256, 95, "strip.jpg").height == 59  # by the longer side: 2.7x upscaled


def test_the_split_does_not_depend_on_the_order_ratios_are_written_in():
    """DVC and the align journal compare params as mappings: a reordered ``ratios`` must split alike."""
    from itertools import permutations

    ratios = {"train": 0.7, "val": 0.1, "test": 0.2}
    ids = [f"PMC{n}" for n in range(2000)]
    splits = [[split_of(i, dict(order)) for i in ids] for order in permutations(ratios.items())]
    assert all(s == splits[0] for s in splits)
    counts = {name: splits[0].count(name) / len(ids) for name in ratios}
    assert all(abs(counts[n] - ratios[n]) < 0.03 for n in ratios)
    assert split_of("PMC3532326", {"train": 0.7, "val": 0.0, "test": 0.3}) == "test"  # README's walk-through


def test_an_unreadable_article_is_a_reject_named_without_the_checkout_path(tmp_path):
    from biomedclip_factory.corpus.align import align_article

    article = tmp_path / "PMC1.1"
    article.mkdir()
    (article / "PMC1.1.json").write_text('{"pmcid": "PMC1"}')  # its XML never arrived
    result = align_article(article, tmp_path / "images", CFG)
    [reject] = result.rejects
    assert reject.reason == "article_unreadable" and reject.detail.startswith("PMC1.1.xml: No such file")
    assert str(tmp_path) not in reject.detail  # rejects.jsonl is a DVC output, hashed alike in any checkout
    (article / "PMC1.1.json").write_text("{half")
    assert align_article(article, tmp_path / "images", CFG).rejects[0].detail.startswith("PMC1.1.json: ")
