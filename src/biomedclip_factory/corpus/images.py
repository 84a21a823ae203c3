"""Decode a figure safely and normalise it to an RGB JPEG of bounded size.

JPEG decoding uses Pillow's draft mode, which lets libjpeg downscale by 1/2..1/8 while decoding
instead of decoding full size and resizing — most of the time saved on large PMC figures. The
remaining shrink runs on torch's uint8 antialiased bicubic kernel, which matches Pillow's bicubic
to ±1 level and runs ~4× faster than it on CPU (the slowest step when no draft reduction applies,
e.g. 600–800 px web figures at the paper profile's 512 px).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
import torch
from PIL import Image

from ..errors import ArticleError
from ..rgb import to_rgb, unreadable_because

# Decompression-bomb limit, far above any real figure; Pillow warns above it and fails at twice it.
Image.MAX_IMAGE_PIXELS = 180_000_000


@dataclass(frozen=True)
class NormalisedImage:
    jpeg: bytes
    width: int
    height: int
    sha256: str
    phash: str


def target_size(width: int, height: int, max_side: int, crop_side: int | None) -> tuple[int, int] | None:
    """The size an image is shrunk to (None: it stays): the longer side down to ``max_side``, but the
    shorter side never below ``crop_side``.

    The training crop (``RandomResizedCrop``, aspect 3/4..4/3) of an elongated figure spans its
    shorter side; bounded by the longer side alone, a 5:1 figure at 512 px would be 102 px high and its
    crop upscaled 2.2x to 224, where the paper cropped the original.
    """
    scale = max_side / max(width, height)
    if crop_side:
        scale = max(scale, crop_side / min(width, height))
    if scale >= 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` (RGB) resized to ``size`` (its aspect ratio).

    Like ``Image.thumbnail``'s ``reducing_gap=2``: a cheap integer box reduction first while the
    image is over twice the target, so the bicubic pass never starts from a huge TIFF.
    """
    factor = int(min(img.width / size[0], img.height / size[1]) / 2)
    if factor > 1:
        img = img.reduce(factor)
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(pixels, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return Image.fromarray(small[0].permute(1, 2, 0).contiguous().numpy())


def decode(data: bytes, max_side: int, crop_side: int | None = None) -> Image.Image:
    """The image in ``data``, JPEGs decoded at the smallest libjpeg scale that still covers its target size."""
    img = Image.open(io.BytesIO(data))
    size = target_size(img.width, img.height, max_side, crop_side) if img.format == "JPEG" else None
    if size:
        # Ask libjpeg for the target size itself, so it can decode at 1/2..1/8 scale whenever that
        # still covers it; (max_side, max_side) would block any reduction for wide or tall figures.
        img.draft("RGB", size)
    img.load()
    return img


def normalise_image(data: bytes, max_side: int, quality: int, where: str, crop_side: int | None = None
                    ) -> NormalisedImage:
    """Decode ``data``, convert to RGB, shrink to ``target_size``, re-encode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = decode(data, max_side, crop_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ArticleError(f"{where}: image too large ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ArticleError(f"{where}: undecodable image: {unreadable_because(exc)}") from exc
    img = to_rgb(img)
    size = target_size(img.width, img.height, max_side, crop_side)
    if size:
        img = _shrink(img, size)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    jpeg = out.getvalue()
    return NormalisedImage(jpeg=jpeg, width=img.width, height=img.height,
                           sha256=hashlib.sha256(jpeg).hexdigest(), phash=perceptual_hash(img))


def perceptual_hash(img: Image.Image) -> str:
    """imagehash's 64-bit pHash, of a 32 px grey copy made with a box reduction first.

    ``imagehash.phash`` resamples the whole image with Lanczos, which at 512 px costs more than the
    JPEG encode; reducing first (``reducing_gap=2``) changes ~1 bit of 64 on average (≤ 4 seen on
    real PMC figures) and halves its cost.
    """
    return str(imagehash.phash(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)))
