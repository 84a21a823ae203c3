"""8-bit RGB as a reader sees a figure: one conversion for align, evaluation and serving alike, so a
model is trained, scored and served on the same pixels."""
from __future__ import annotations

import re

import numpy as np
from PIL import Image

WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """Transparency is laid on white, the page a figure sits on (dropping alpha shows the black that
    transparent pixels usually store: black text on a transparent background vanishes); 16-bit and
    float images are stretched over their own finite range (a plain conversion clips them to a few
    saturated levels, or to black for floats in [0, 1])."""
    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        values = np.nan_to_num(np.clip(values, low, high), nan=low)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    if "A" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def unreadable_because(exc: BaseException) -> str:
    """Why Pillow could not read an image, in words that are the same on every run and in every clone.

    Pillow names what it read from: a buffer by its memory address (``<_io.BytesIO object at 0x7f…>``,
    new on every run) or a file by its absolute path. Either, written into a record DVC hashes
    (``rejects.jsonl``, ``eval.json``), changes the output with nothing changed and reruns what follows.
    """
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image format Pillow reads"
    if isinstance(exc, OSError) and exc.strerror:  # errno errors: the reason without the path
        return exc.strerror
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
