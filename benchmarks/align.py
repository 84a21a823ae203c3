"""Benchmark: our align path vs the PMC-15M pipeline's (pubmed_parser 0.5.1), same real articles.

(a) whole path per article — XML → figures → each graphic resolved to its file → image
    normalised: ours (``parse_article`` + ``resolve_image`` + ``normalise_image``, draft-mode
    decode to ``--max-side``) vs the baseline (``parse_pubmed_caption`` on a temp file, full-size
    decode, RGB, JPEG save with ``optimize=True``, quality 90). Articles/s ratio, target ≥ 3×, on one
    thread; then ours again as the stage runs it (``--workers`` threads, the default runner, and
    ``--workers`` processes, ``runner: processes``) against the same sequential baseline. Also: how
    many images each path normalises (the baseline resolves fewer, from wrong hrefs, so it does
    less work per article). And the ceiling: a floor path that only parses the XML and decodes
    the same images as small as the target allows, against the same baseline — no path that
    decodes the figures it keeps can beat that ratio on these files.
(b) XML extraction alone: ``parse_article`` vs ``parse_pubmed_caption``; target ≥ 1.0×.
(c) fidelity of both against an independent plain-lxml reading (``tests/jats_reference.py``):
    figures with a graphic found, graphic href right, caption equal to the whitespace-normalised
    reference (inline markup kept, caption blocks joined by one space, a fig-group's caption
    before its panels'), crashes.

Articles: every JATS file under ``sample/pmc-mirror`` and ``../shared/data/pmc`` (when present);
images are those beside each XML. Needs ``pip install -r benchmarks/requirements.txt``.

    .venv/bin/python benchmarks/align.py [--rounds 3] [--max-side 256] [--workers 2] [--repeat 40]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from lxml import etree
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from biomedclip_factory.corpus.align import resolve_image  # noqa: E402
from biomedclip_factory.corpus.images import decode, normalise_image  # noqa: E402
from biomedclip_factory.errors import ArticleError  # noqa: E402
from biomedclip_factory.parallel import process_map, thread_map  # noqa: E402
from biomedclip_factory.pmc.jats import parse_article  # noqa: E402
from biomedclip_factory.pmc.package import extract_package  # noqa: E402
from tests.jats_reference import normalise, reference  # noqa: E402

try:
    from pubmed_parser import parse_pubmed_caption
except ImportError:  # pragma: no cover - a benchmark-only dependency
    sys.exit("benchmarks/align.py needs pubmed_parser: pip install -r benchmarks/requirements.txt")

SHARED = ROOT.parent / "shared" / "data" / "pmc"


def articles(unpacked: Path) -> list[Path]:
    """Every JATS file of the sample and the shared data; legacy packages unpacked under ``unpacked``."""
    for package in sorted(SHARED.glob("legacy_oa_packages/*.tar.gz")):
        extract_package(package, unpacked / package.name.removesuffix(".tar.gz"))
    roots = [ROOT / "sample" / "pmc-mirror", SHARED, unpacked]
    return sorted(p for r in roots if r.is_dir() for p in r.rglob("*") if p.suffix in (".xml", ".nxml"))


# ---- the two paths ---------------------------------------------------------------------------------

def ours_xml(path: Path, mentions: bool = True) -> list[tuple[str, str | None, str]]:
    return [(f.fig_id, f.href, f.caption) for f in parse_article(path.read_bytes(), path.name, mentions).figures]


def baseline_xml(path: Path) -> list[tuple[str, str | None, str]]:
    with tempfile.NamedTemporaryFile(suffix=".nxml") as tmp:  # it reads a path, as PMC-15M's script did
        tmp.write(path.read_bytes())
        tmp.flush()
        return [(d["fig_id"], d["graphic_ref"], d["fig_caption"]) for d in parse_pubmed_caption(tmp.name)]


def ours_image(image: Path, max_side: int) -> None:
    normalise_image(image.read_bytes(), max_side, 90, image.name)


def baseline_image(image: Path) -> None:
    img = Image.open(image)
    img.load()
    img.convert("RGB").save(io.BytesIO(), format="JPEG", quality=90, optimize=True)


def ours_whole(path: Path, max_side: int) -> int:
    """Images normalised for the article at ``path``."""
    done = 0
    for image in our_images(path):
        try:
            ours_image(image, max_side)
            done += 1
        except ArticleError:
            pass
    return done


def our_images(path: Path) -> list[Path]:
    """The figure files our parser leads to for the article at ``path``."""
    hrefs = (f.href for f in parse_article(path.read_bytes(), path.name).figures if f.href)
    return [i for i in (resolve_image(path.parent, h) for h in hrefs) if i is not None]


def decode_floor(images: dict[Path, list[Path]], max_side: int, path: Path) -> int:
    """The least any path must do for the article at ``path`` with these images: parse the XML
    (no extraction) and decode each image at the smallest size that still covers ``max_side``
    (JPEG draft) — no resize, encode, hash or caption work. Its rate over the baseline's is the
    ceiling of the whole-path ratio on these files."""
    etree.fromstring(path.read_bytes(), etree.XMLParser(recover=True, resolve_entities=False, no_network=True))
    for image in images[path]:
        decode(image.read_bytes(), max_side)
    return len(images[path])


def baseline_whole(path: Path) -> int:
    done = 0
    for _, href, _ in baseline_xml(path):
        image = resolve_image(path.parent, href) if href else None
        if image is not None:
            try:
                baseline_image(image)
                done += 1
            except (OSError, ValueError):
                pass
    return done


def _quiet(fn, path: Path) -> int:
    """``fn(path)``, or 0 where it raises: the baseline crashes on some real files; count time, go on."""
    try:
        return fn(path)
    except Exception:  # noqa: BLE001
        return 0


def images_both_resolve(paths: list[Path]) -> list[Path]:
    """The figure files both parsers lead to: the same images, for a like-for-like per-image rate."""
    out = []
    for p in paths:
        try:
            theirs = {resolve_image(p.parent, h) for _, h, _ in baseline_xml(p) if h}
        except Exception:  # noqa: BLE001
            continue
        out += [i for i in our_images(p) if i in theirs]
    return out


def rate(fn, paths: list[Path], mapper=map) -> float:
    """Items/s of ``fn`` over ``paths``, one after another or through one of the stage's mappers."""
    t0 = time.perf_counter()
    list(mapper(partial(_quiet, fn), paths))
    return len(paths) / (time.perf_counter() - t0)


def fidelity(name: str, fn, paths: list[Path]) -> dict:
    found = hrefs = captions = crashes = total = 0
    for p in paths:
        ref = reference(p.read_bytes())
        if ref is None:
            continue  # malformed XML: no reference; ours reports it as an ArticleError
        total += len(ref)
        try:
            got = {fid: (href, cap) for fid, href, cap in fn(p)}
        except Exception:  # noqa: BLE001
            crashes += 1
            continue
        for fid, (href, cap) in ref.items():
            if fid in got:
                found += 1
                hrefs += got[fid][0] == href
                captions += normalise(got[fid][1] or "") == cap
    return {"parser": name, "figures_with_graphic": total, "found": found, "href_right": hrefs,
            "caption_exact": captions, "crashed_files": crashes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="threads / processes for the stage-as-run figures")
    ap.add_argument("--repeat", type=int, default=40,
                    help="whole path: passes over the articles (amortises pool start-up)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(articles(Path(tmp)), args)


def run(paths: list[Path], args: argparse.Namespace) -> None:
    with_images = [p for p in paths if any(p.parent.glob("*.jp*g")) or any(p.parent.glob("*.tif*"))]
    common = images_both_resolve(with_images)
    ours_whole(with_images[0], args.max_side), baseline_whole(with_images[0])  # warm-up: lazy imports
    ours = partial(ours_whole, max_side=args.max_side)
    corpus = with_images * args.repeat
    stage_mappers = {f"{args.workers}_threads": thread_map(args.workers),
                     f"{args.workers}_processes": process_map(args.workers)}
    floor = partial(decode_floor, {p: our_images(p) for p in with_images}, args.max_side)
    whole, ceiling, ceiling_threads, xml_only, xml_captions_only, per_image = [], [], [], [], [], []
    whole_mapped: dict[str, list[float]] = {name: [] for name in stage_mappers}
    for _ in range(args.rounds):  # alternate, so drift in machine load hits both alike
        b = rate(baseline_whole, corpus)
        whole.append(rate(ours, corpus) / b)
        ceiling.append(rate(floor, corpus) / b)
        for name, mapper in stage_mappers.items():
            whole_mapped[name].append(rate(ours, corpus, mapper) / b)
        ceiling_threads.append(rate(floor, corpus, stage_mappers[f"{args.workers}_threads"]) / b)
        b = rate(baseline_xml, paths)
        xml_only.append(rate(ours_xml, paths) / b)
        xml_captions_only.append(rate(lambda p: ours_xml(p, mentions=False), paths) / b)
        b = rate(baseline_image, common)
        per_image.append(rate(lambda i: ours_image(i, args.max_side), common) / b)
    rows = [fidelity("ours", ours_xml, paths), fidelity("pubmed_parser", baseline_xml, paths)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    print(json.dumps({"benchmark": "align", "baseline": "pubmed_parser 0.5.1 parse_pubmed_caption (PMC-15M)",
                      "ratio": round(statistics.median(whole), 2), "target": 3.0,  # whole path, one thread each
                      "articles": len(paths), "articles_with_images": len(with_images),
                      "whole_path_ceiling_decode_only": round(statistics.median(ceiling), 2),
                      f"whole_path_ceiling_decode_only_{args.workers}_threads": round(statistics.median(ceiling_threads), 2),
                      **{f"whole_path_ratio_{n}": round(statistics.median(r), 2) for n, r in whole_mapped.items()},
                      "images_normalised": {"ours": sum(map(partial(_quiet, ours), with_images)),
                                            "baseline": sum(map(partial(_quiet, baseline_whole), with_images))},
                      "xml_only_ratio": round(statistics.median(xml_only), 2), "xml_only_target": 1.0,
                      "xml_only_ratio_without_mentions": round(statistics.median(xml_captions_only), 2),
                      "same_images": len(common), "per_image_ratio": round(statistics.median(per_image), 2),
                      "fidelity": rows}))


if __name__ == "__main__":
    main()
