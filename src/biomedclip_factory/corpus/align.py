"""Turn scraped article versions into (figure image, caption) pair records plus rejects.

One article at a time: parse the JATS, resolve each figure's ``xlink:href`` to a scraped file,
filter, normalise the image, and record the pair with its article's licence and split. Every
dropped figure or article lands in the rejects with its reason; nothing raises past one article.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArticleError
from ..io import write_bytes_atomic
from ..pmc.jats import Figure, parse_article
from .align_config import AlignConfig
from .images import normalise_image
from .records import Pair, Reject, image_path, make_pair_id
from .split import split_of

# Full-size figure formats first; PMC's small GIF thumbnails come last.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif")


@dataclass
class ArticleResult:
    pairs: list[Pair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    figures: int = 0


def resolve_image(article_dir: Path, href: str) -> Path | None:
    """The scraped file for ``href``: exact name, or href plus a known extension."""
    exact = article_dir / href
    if exact.suffix.lower() in IMAGE_EXTENSIONS and exact.is_file():
        return exact
    stem = href[: -len(exact.suffix)] if exact.suffix.lower() in IMAGE_EXTENSIONS else href
    for ext in IMAGE_EXTENSIONS:
        for candidate in (article_dir / f"{stem}{ext}", article_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def align_article(article_dir: Path, images_out: Path, cfg: AlignConfig) -> ArticleResult:
    """Pairs and rejects of one scraped article version folder ``PMC<id>.<ver>/``."""
    prefix = article_dir.name
    result = ArticleResult()
    try:
        meta = json.loads((article_dir / f"{prefix}.json").read_bytes())
        article = parse_article((article_dir / f"{prefix}.xml").read_bytes(), f"{prefix}.xml", cfg.mentions)
    except OSError as exc:  # named by file, not by the checkout's absolute path: rejects.jsonl is a DVC output
        name = Path(exc.filename).name if exc.filename else prefix
        result.rejects.append(Reject(prefix, None, "article_unreadable", f"{name}: {exc.strerror or exc}"))
        return result
    except json.JSONDecodeError as exc:
        result.rejects.append(Reject(prefix, None, "article_unreadable", f"{prefix}.json: {exc}"))
        return result
    except ArticleError as exc:
        result.rejects.append(Reject(prefix, None, "xml_malformed", str(exc)))
        return result
    pmcid = meta.get("pmcid") or article.pmcid or prefix.split(".")[0]
    pmid = meta.get("pmid") or article.pmid
    provenance = {"pmcid": pmcid, "pmid": str(pmid) if pmid else None, "license_code": meta.get("license_code"),
                  "split": split_of(pmcid, cfg.split_ratios, cfg.split_salt)}
    for fig in article.figures:
        result.figures += 1
        pair = _align_figure(article_dir, images_out, prefix, fig, cfg, result, provenance)
        if pair is not None:
            result.pairs.append(pair)
    return result


def _align_figure(article_dir: Path, images_out: Path, prefix: str, fig: Figure, cfg: AlignConfig,
                  result: ArticleResult, provenance: dict[str, Any]) -> Pair | None:
    if not fig.href:
        result.rejects.append(Reject(prefix, fig.fig_id, "no_graphic"))
        return None
    if len(fig.caption) < cfg.min_caption_chars:
        result.rejects.append(Reject(prefix, fig.fig_id, "caption_too_short", fig.caption))
        return None
    path = resolve_image(article_dir, fig.href)
    if path is None:
        result.rejects.append(Reject(prefix, fig.fig_id, "image_missing", fig.href))
        return None
    try:
        img = normalise_image(path.read_bytes(), cfg.max_side, cfg.jpeg_quality, f"{prefix}/{path.name}",
                              cfg.crop_side)
    except ArticleError as exc:
        result.rejects.append(Reject(prefix, fig.fig_id, "image_undecodable", str(exc)))
        return None
    if min(img.width, img.height) < cfg.min_side:
        result.rejects.append(Reject(prefix, fig.fig_id, "image_too_small", f"{img.width}x{img.height}"))
        return None
    if cfg.max_aspect_ratio and max(img.width, img.height) > cfg.max_aspect_ratio * min(img.width, img.height):
        result.rejects.append(Reject(prefix, fig.fig_id, "aspect_ratio", f"{img.width}x{img.height}"))
        return None
    pair_id = make_pair_id(prefix, fig.fig_id)
    rel = image_path(pair_id)
    write_bytes_atomic(images_out / rel, img.jpeg)
    return Pair(pair_id=pair_id, fig_id=fig.fig_id, label=fig.label, caption=fig.caption, mentions=list(fig.mentions),
                image=rel, width=img.width, height=img.height, sha256=img.sha256, phash=img.phash, **provenance)
