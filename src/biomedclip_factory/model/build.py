"""Build, save and reload the CLIP in open_clip's ``local-dir:`` format.

BiomedCLIP's layout: a timm ViT image tower and an HF BERT text tower pooled with
``cls_last_hidden_state_pooler`` and an MLP projection. The model dir holds
``open_clip_config.json``, the weights, and the text tower's HF config and tokenizer, so
``open_clip.create_model_and_transforms("local-dir:<dir>")`` and ``open_clip.get_tokenizer`` load it
offline. open_clip builds the HF tower from ``text_cfg.hf_model_name``, so that field holds the
dir's absolute path; ``relocate`` rewrites it for plain open_clip after the dir is copied elsewhere.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import timm
import torch
from transformers import BertConfig

from ..errors import ParamsError
from ..io import write_json_atomic

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    embed_dim: int
    timm_model_name: str
    context_length: int
    text_layers: int
    text_width: int
    text_heads: int
    text_mlp_ratio: int


def timm_image_size(name: str) -> int:
    """The input size a timm model was defined for (open_clip's TimmModel builds it at that size)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name) or timm.create_model(name, pretrained=False).pretrained_cfg
    except RuntimeError as exc:
        raise ParamsError(f"params: 'model.vision.timm_model_name' is not a timm model: {name!r}") from exc
    size = cfg.input_size if hasattr(cfg, "input_size") else cfg["input_size"]
    return int(size[-1])


def _text_config(spec: ModelSpec, vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=spec.text_width, num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads, intermediate_size=spec.text_width * spec.text_mlp_ratio,
        max_position_embeddings=max(512, spec.context_length),
    )


def open_clip_config(spec: ModelSpec, model_dir: Path) -> dict[str, Any]:
    image_size = timm_image_size(spec.timm_model_name)
    return {
        "model_cfg": {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {"timm_model_name": spec.timm_model_name, "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": image_size},
            "text_cfg": {"hf_model_name": str(model_dir.resolve()), "hf_tokenizer_name": str(model_dir.resolve()),
                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": spec.context_length},
        },
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def init_model_dir(spec: ModelSpec, tokenizer_dir: Path, model_dir: Path) -> None:
    """Lay out a model dir (config, text config, tokenizer) before any weights exist."""
    from transformers import AutoTokenizer

    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = spec.context_length
    tokenizer.save_pretrained(model_dir)
    _text_config(spec, len(tokenizer)).save_pretrained(model_dir)
    write_json_atomic(model_dir / CONFIG_NAME, open_clip_config(spec, model_dir))


def create_model(model_dir: Path, load_weights: bool) -> torch.nn.Module:
    """Instantiate the CLIP described by ``model_dir`` (with its weights when ``load_weights``).

    The text tower is pointed at ``model_dir`` in memory, so a dir that was copied or pulled to
    another path loads as it is — nothing is written into it (it is a DVC output).
    """
    text_cfg = json.loads((model_dir / CONFIG_NAME).read_text())["model_cfg"]["text_cfg"]
    here = str(model_dir.resolve())
    text_cfg.update(hf_model_name=here, hf_tokenizer_name=here, hf_model_pretrained=False)
    # Without weights open_clip warns "initialized randomly" — that is the point of a fresh model.
    logging.disable(logging.NOTSET if load_weights else logging.WARNING)
    try:
        return open_clip.create_model(f"local-dir:{model_dir}", load_weights=load_weights,
                                      pretrained_text=False, pretrained_image=False, text_cfg=text_cfg)
    finally:
        logging.disable(logging.NOTSET)


def save_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Write the state dict open_clip expects (0-dim ``logit_scale``) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    for key in ("logit_scale", "logit_bias"):
        if key in state:
            state[key] = state[key].reshape([])
    tmp = model_dir / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp))
    tmp.replace(model_dir / WEIGHTS_NAME)


def relocate(model_dir: Path) -> None:
    """Point the config's HF text tower paths at ``model_dir`` after a copy or a move.

    Only needed for loading the dir with plain ``open_clip`` (our loaders don't need it).
    """
    path = model_dir / CONFIG_NAME
    config = json.loads(path.read_text())
    text_cfg = config["model_cfg"]["text_cfg"]
    here = str(model_dir.resolve())
    if text_cfg.get("hf_model_name") != here or text_cfg.get("hf_tokenizer_name") != here:
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = here
        write_json_atomic(path, config)
