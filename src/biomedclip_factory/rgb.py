"""8-bit RGB as a reader sees a figure: one conversion for align, evaluation and serving alike, so a
model is trained, scored and served on the same pixels."""
from __future__ import annotations

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
