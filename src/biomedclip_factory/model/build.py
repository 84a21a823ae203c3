"""Build, save and reload the CLIP in open_clip's ``local-dir:`` format.

BiomedCLIP's layout: a timm ViT image tower and an HF BERT text tower pooled with
``cls_last_hidden_state_pooler`` and an MLP projection. The model dir holds
``open_clip_config.json``, the weights, and the text tower's HF config and tokenizer, so
``open_clip.create_model_and_transforms("local-dir:<dir>")`` and ``open_clip.get_tokenizer`` load it
offline. open_clip builds the HF tower from ``text_cfg.hf_model_name``, a path, so that field names the
dir as its writer named it (``text_tower_location``); ``relocate`` rewrites it for plain open_clip after
the dir is copied elsewhere.
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
from timm.layers import resample_abs_pos_embed
from transformers import AutoConfig, AutoTokenizer, BertConfig, PretrainedConfig

from ..errors import ParamsError
from ..io import write_json_atomic
from ..params import Section
from .sources import CONFIG_NAME, WEIGHTS_NAME


@dataclass(frozen=True)
class ModelSpec:
    embed_dim: int
    timm_model_name: str
    context_length: int
    text_layers: int
    text_width: int
    text_heads: int
    text_mlp_ratio: int

    @classmethod
    def from_params(cls, m: Section) -> "ModelSpec":
        """The ``model:`` section's sizes (a pretrained text tower's own config overrides the text ones)."""
        vision, text = m.section("vision"), m.section("text")
        timm_image_size(vision.get("timm_model_name", str))  # an unknown timm name fails here, before any output
        return cls(embed_dim=m.positive("embed_dim"), timm_model_name=vision.get("timm_model_name", str),
                   context_length=text.positive("context_length"), text_layers=text.positive("layers"),
                   text_width=text.positive("width"), text_heads=text.positive("heads"),
                   text_mlp_ratio=text.positive("mlp_ratio"))


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


def text_tower_location(name: str | Path) -> dict[str, str]:
    """The config's names of the HF text tower: the model dir as its writer names it, never resolved. The
    pretrain stage names ``models/clip`` relative to the project, so every clone writes the same bytes (one
    DVC hash, one registry build for the same weights) and plain open_clip loads the dir from the project
    root. An absolute path would differ per clone, and after a ``dvc pull`` elsewhere name a dir that is
    not there, or another clone's."""
    return {"hf_model_name": str(name), "hf_tokenizer_name": str(name)}


def open_clip_config(spec: ModelSpec, model_dir: Path) -> dict[str, Any]:
    image_size = timm_image_size(spec.timm_model_name)
    return {
        "model_cfg": {
            "embed_dim": spec.embed_dim,
            "vision_cfg": {"timm_model_name": spec.timm_model_name, "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": image_size},
            "text_cfg": {**text_tower_location(model_dir), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": spec.context_length},
        },
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def _check_vocabulary(text_config: PretrainedConfig, tokenizer: Any, source: Path) -> None:
    """Token ids must mean the same tokens in the tokenizer and the pretrained text tower."""
    if text_config.vocab_size != len(tokenizer):
        raise ParamsError(
            f"params: the text tower from {source} has a {text_config.vocab_size}-token vocabulary but "
            f"models/tokenizer has {len(tokenizer)}: set 'tokenizer.source' to the same dir")


def init_model_dir(spec: ModelSpec, tokenizer_dir: Path, model_dir: Path,
                   text_init: Path | None = None) -> torch.nn.Module:
    """Describe a new model in ``model_dir`` (configs and tokenizer) and return it with its starting weights.

    The weights stay in memory: training writes them once, at its end. ``text_init`` is a pretrained HF
    encoder dir (e.g. a BERT): its config replaces the text sizes in ``spec`` and its weights start the
    text tower; the image tower (and a text tower without ``text_init``) starts from torch's seeded init.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = spec.context_length
    if text_init is None:
        text_config = _text_config(spec, len(tokenizer))
    else:
        text_config = AutoConfig.from_pretrained(text_init)
        _check_vocabulary(text_config, tokenizer, text_init)
        if spec.context_length > getattr(text_config, "max_position_embeddings", spec.context_length):
            raise ParamsError(f"params: 'model.text.context_length' {spec.context_length} exceeds the "
                              f"{text_config.max_position_embeddings} positions of the text tower in {text_init}")
    tokenizer.save_pretrained(model_dir)
    save_text_config(text_config, model_dir)
    write_json_atomic(model_dir / CONFIG_NAME, open_clip_config(spec, model_dir))
    return create_model(model_dir, load_weights=False, text_weights=text_init)


def save_text_config(text_config: Any, model_dir: Path) -> None:
    """The text tower's HF config, saying float32: transformers builds a tower in its config's ``dtype``, so a
    BERT saved in bf16 would train bf16 weights under AdamW, and every later load of this dir would too."""
    text_config.dtype = torch.float32
    text_config.save_pretrained(model_dir)


def init_from_model_dir(source: Path, tokenizer_dir: Path, model_dir: Path,
                        timm_model_name: str | None = None) -> torch.nn.Module:
    """Describe in ``model_dir`` a model continuing another open_clip ``local-dir:`` model, and return it
    holding that model's weights (in memory, like ``init_model_dir``).

    The vocabulary must be the source's own. With ``timm_model_name`` naming the same ViT at another
    input size (``vit_base_patch16_224`` → ``vit_base_patch16_384``, the paper's 384-px phase) the position
    embeddings are resampled to the new patch grid (timm's ``resample_abs_pos_embed``, bicubic) and every
    other weight is kept.
    """
    if not (source / WEIGHTS_NAME).is_file():
        raise ParamsError(f"params: 'model.init_from': {source} has no {WEIGHTS_NAME}")
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = json.loads((source / CONFIG_NAME).read_text())
    text_config = AutoConfig.from_pretrained(source)
    _check_vocabulary(text_config, tokenizer, source)
    tokenizer.model_max_length = config["model_cfg"]["text_cfg"]["context_length"]
    tokenizer.save_pretrained(model_dir)
    save_text_config(text_config, model_dir)
    config["model_cfg"]["text_cfg"].update(text_tower_location(model_dir))
    if timm_model_name not in (None, config["model_cfg"]["vision_cfg"].get("timm_model_name")):
        config["model_cfg"]["vision_cfg"].update(timm_model_name=timm_model_name,
                                                 image_size=timm_image_size(timm_model_name))
    write_json_atomic(model_dir / CONFIG_NAME, config)
    return _with_weights_of(source, model_dir)


def _with_weights_of(source: Path, model_dir: Path) -> torch.nn.Module:
    """The model ``model_dir``'s config describes, holding ``source``'s weights (position embeddings
    resampled when the image tower is the same ViT at another input size)."""
    from safetensors.torch import load_file

    model = create_model(model_dir, load_weights=False)
    state = load_file(source / WEIGHTS_NAME)
    key = "visual.trunk.pos_embed"
    target = model.state_dict()
    if key in state and state[key].shape != target[key].shape:
        trunk = model.visual.trunk
        prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        state[key] = resample_abs_pos_embed(state[key], new_size=list(trunk.patch_embed.grid_size),
                                            num_prefix_tokens=prefix)
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    if mismatched or target.keys() != state.keys():
        wanted = json.loads((source / CONFIG_NAME).read_text())["model_cfg"]["vision_cfg"].get("timm_model_name")
        raise ParamsError(f"params: 'model.vision.timm_model_name' must be {wanted!r} (the image tower of {source}) "
                          f"or the same ViT at another input size; differs in "
                          f"{(mismatched or sorted(target.keys() ^ state.keys()))[:3]}")
    model.load_state_dict(state)
    return model


def create_model(model_dir: Path, load_weights: bool, text_weights: Path | None = None) -> torch.nn.Module:
    """Instantiate the CLIP described by ``model_dir`` (with its weights when ``load_weights``).

    The text tower is pointed at ``model_dir`` in memory, so a dir that was copied or pulled to
    another path loads as it is — nothing is written into it (it is a DVC output). ``text_weights``
    is an HF dir whose pretrained weights start the text tower instead.
    """
    text_cfg = json.loads((model_dir / CONFIG_NAME).read_text())["model_cfg"]["text_cfg"]
    here = str(model_dir.resolve())
    text_cfg.update(hf_model_name=str(text_weights.resolve()) if text_weights else here, hf_tokenizer_name=here,
                    hf_model_pretrained=text_weights is not None)
    # Without weights open_clip warns "initialized randomly" — that is the point of a fresh model.
    logging.disable(logging.NOTSET if load_weights else logging.WARNING)
    try:
        model = open_clip.create_model(f"local-dir:{model_dir}", load_weights=load_weights,
                                       pretrained_text=text_weights is not None, pretrained_image=False,
                                       text_cfg=text_cfg)
    finally:
        logging.disable(logging.NOTSET)
    return model.float()  # fp32 masters: pretrained text weights come in their dir's dtype (bf16 ones, bf16)


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


def relocate(model_dir: Path, name: str | Path | None = None) -> None:
    """Name the text tower ``name`` (``model_dir`` as given when None): the project-relative name a stage
    publishes, or, after a copy or a move, the absolute path that lets plain open_clip load the dir from
    any working directory (our loaders need neither)."""
    path = model_dir / CONFIG_NAME
    config = json.loads(path.read_text())
    text_cfg, location = config["model_cfg"]["text_cfg"], text_tower_location(model_dir if name is None else name)
    if any(text_cfg.get(k) != v for k, v in location.items()):
        text_cfg.update(location)
        write_json_atomic(path, config)
