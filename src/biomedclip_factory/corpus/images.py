"""Decode a figure safely and normalise it to an RGB JPEG of bounded size.

JPEG decoding uses Pillow's draft mode, which lets libjpeg downscale by 1/2..1/8 while decoding
instead of decoding full size and resizing — most of the time saved on large PMC figures.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image

from ..errors import ArticleError

# Decompression-bomb limit, far above any real figure; Pillow warns above it and fails at twice it.
Image.MAX_IMAGE_PIXELS = 180_000_000


@dataclass(frozen=True)
class NormalisedImage:
    jpeg: bytes
    width: int
    height: int
    sha256: str
    phash: str


def normalise_image(data: bytes, max_side: int, quality: int, where: str) -> NormalisedImage:
    """Decode ``data``, convert to RGB, shrink so the longer side is ≤ ``max_side``, re-encode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG" and max(img.size) > max_side:
                # Ask libjpeg for the target size itself (longer side = max_side), so it can decode at
                # 1/2..1/8 scale whenever that still covers it; (max_side, max_side) would block any
                # reduction for wide or tall figures.
                scale = max_side / max(img.size)
                img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ArticleError(f"{where}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ArticleError(f"{where}: undecodable image: {exc}") from exc
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    jpeg = out.getvalue()
    return NormalisedImage(jpeg=jpeg, width=img.width, height=img.height,
                           sha256=hashlib.sha256(jpeg).hexdigest(), phash=str(imagehash.phash(img)))
