"""The align settings, from params.yaml's ``align`` section.

Kept apart from ``align.py`` on purpose: the align journal keys its entries to the bytes of the
code that makes a per-article result, and reading params is not part of that (the settings
themselves are in the key), so a reworded params error does not throw the journal away.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParamsError
from ..params import Section
from .dedup import MAX_DISTANCE


@dataclass(frozen=True)
class AlignConfig:
    max_side: int  # the longer side's bound ...
    jpeg_quality: int
    min_caption_chars: int
    min_side: int
    split_ratios: dict[str, float]
    split_salt: str = ""
    max_aspect_ratio: float | None = None  # longer side / shorter side; None = any
    near_duplicate_max_distance: int | None = None  # pHash Hamming distance; None = exact duplicates only
    mentions: bool = True  # keep the body sentences citing each figure
    crop_side: int | None = None  # ... that stops where the shorter side would fall below this; None = it alone

    @classmethod
    def from_params(cls, p: Section) -> AlignConfig:
        """The ``align`` section, checked before anything is read or written."""
        split = p.section("split")
        raw_ratios = split.get("ratios", dict)
        if not raw_ratios or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                                 for v in raw_ratios.values()):
            raise ParamsError(f"params: '{split.path}.ratios' must map split names to numbers >= 0, got {raw_ratios!r}")
        near = p.get("near_duplicate_distance", int, None)
        if near is not None and not 0 <= near <= MAX_DISTANCE:
            raise ParamsError(f"params: '{p.path}.near_duplicate_distance' must be 0..{MAX_DISTANCE} bits or null, "
                              f"got {near}")
        aspect = p.get("max_aspect_ratio", float, None)
        if aspect is not None and aspect < 1:
            raise ParamsError(f"params: '{p.path}.max_aspect_ratio' must be >= 1 or null, got {aspect}")
        crop_side, max_side = p.get("crop_side", int, None), p.positive("max_side")
        if crop_side is not None and not 0 < crop_side <= max_side:
            raise ParamsError(f"params: '{p.path}.crop_side' must be in 1..max_side ({max_side}) or null, got {crop_side}")
        if crop_side is not None and aspect is None:  # the aspect bound is what bounds the longer side then
            raise ParamsError(f"params: '{p.path}.crop_side' needs '{p.path}.max_aspect_ratio': without it a banner "
                              f"{crop_side} px high would keep its whole length (or set crop_side: null)")
        return cls(max_side=max_side, crop_side=crop_side, jpeg_quality=p.positive("jpeg_quality"),
                   min_caption_chars=p.get("min_caption_chars", int), min_side=p.get("min_side", int),
                   split_ratios={str(k): float(v) for k, v in raw_ratios.items()}, split_salt=split.get("salt", str, ""),
                   max_aspect_ratio=aspect, near_duplicate_max_distance=near, mentions=p.get("mentions", bool, True))
