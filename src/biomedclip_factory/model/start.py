"""The model a pretraining run starts from: described in its model dir, its weights in memory."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .build import ModelSpec, init_from_model_dir, init_model_dir
from .snapshot import convert_snapshot, is_snapshot


def start_model(spec: ModelSpec, init_dir: Path | None, text_init: Path | None, tokenizer_dir: Path,
                out: Path) -> torch.nn.Module:
    """The starting model, from ``model.init_from`` (a released hub snapshot, or a model dir such as the
    champion), or from ``spec`` with a seeded image tower and a pretrained (``text_init``) or seeded text
    tower. ``out`` gets its configs and tokenizer; its weights are written once, when training ends."""
    if init_dir is not None and is_snapshot(init_dir):  # the released BiomedCLIP's hub layout
        converted = out.with_name(f"{out.name}.snapshot.tmp")
        shutil.rmtree(converted, ignore_errors=True)
        convert_snapshot(init_dir, text_init, converted, "model.text.init_from")
        model = init_from_model_dir(converted, tokenizer_dir, out, spec.timm_model_name)
        shutil.rmtree(converted)
        return model
    if init_dir is not None:
        return init_from_model_dir(init_dir, tokenizer_dir, out, spec.timm_model_name)
    return init_model_dir(spec, tokenizer_dir, out, text_init)
