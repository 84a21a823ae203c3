"""The model a pretraining run starts from, laid out as an open_clip local dir."""
from __future__ import annotations

import shutil
from pathlib import Path

from .build import ModelSpec, init_from_model_dir, init_model_dir
from .snapshot import convert_snapshot, is_snapshot


def lay_out_start(spec: ModelSpec, init_dir: Path | None, text_init: Path | None, tokenizer_dir: Path,
                  out: Path) -> None:
    """``out`` from ``model.init_from`` (a released hub snapshot, or a model dir such as the champion), or
    from ``spec`` with a seeded image tower and a pretrained (``text_init``) or seeded text tower."""
    if init_dir is not None and is_snapshot(init_dir):  # the released BiomedCLIP's hub layout
        converted = out.with_name(f"{out.name}.snapshot.tmp")
        shutil.rmtree(converted, ignore_errors=True)
        convert_snapshot(init_dir, text_init, converted, "model.text.init_from")
        init_from_model_dir(converted, tokenizer_dir, out, spec.timm_model_name)
        shutil.rmtree(converted)
    elif init_dir is not None:
        init_from_model_dir(init_dir, tokenizer_dir, out, spec.timm_model_name)
    else:
        init_model_dir(spec, tokenizer_dir, out, text_init)
